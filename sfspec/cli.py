"""The ``sfspec`` command line: validate, schema, summary (train, eval, export come with the runtime).

Spec errors print as ``file:line:col: path: message`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfspec import __version__
from sfspec.errors import SpecError, SpecIssue
from sfspec.plugins import PluginError, load_plugins

EXIT_SPEC_ERROR = 2


def _add_common(parser: argparse.ArgumentParser, overrides: bool = True) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it registers layers or components); repeatable",
    )
    if overrides:
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            dest="overrides",
            metavar="PATH=VALUE",
            help="override one spec value, e.g. --set train.lr=3e-4; repeatable",
        )


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate spec files; print every problem found."""
    from sfspec import pipeline

    issues: list[SpecIssue] = []
    for path in args.files:
        try:
            loaded = pipeline.load(path, args.overrides)
            if not args.no_env:
                pipeline.check(loaded)
        except SpecError as exc:
            issues += exc.issues
            continue
        if not args.quiet:
            print(f"{path}: ok")
    if issues:
        raise SpecError(issues)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the spec's JSON Schema (for editors: yaml-language-server)."""
    from sfspec.spec.schema import build_schema

    text = json.dumps(build_schema(), indent=2) + "\n"
    if args.out:
        from sfspec.io import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Print every layer of the model a spec describes."""
    from sfspec import pipeline
    from sfspec.summary import format_summary, summary_data, to_json

    checked = pipeline.check(pipeline.load(args.spec, args.overrides))
    data = summary_data(checked.loaded.data["env"]["id"], pipeline.compile_checked(checked))
    data["train"] = _train_settings(checked)
    print(to_json(data) if args.json else format_summary(data) + "\n" + _format_train(data["train"]))
    return 0


def _train_settings(checked) -> dict:
    """What training this spec would use: the derived defaults, the threads auto would choose, what is given."""
    from sfspec.runtime.config import DERIVED, TrainConfig, num_envs_of
    from sfspec.runtime.threads import choose_threads

    spec = checked.loaded.data
    given = spec.get("train") or {}
    cfg = TrainConfig.from_spec(spec)
    num_envs = num_envs_of(spec)
    threads = choose_threads(cfg.threads, checked.memory.params.total, num_envs, _recurrent(checked), cuda=False)
    shown = {key: getattr(cfg, key) for key in DERIVED}
    return {
        **shown,
        "derived": [key for key in DERIVED if key not in given],  # chosen by the rule for env.num_envs
        "num_envs": num_envs,
        "batch": cfg.rollout * num_envs,
        "minibatch": max(1, cfg.rollout * num_envs // cfg.minibatches),
        "threads": threads,
        "threads_setting": cfg.threads,
    }


def _recurrent(checked) -> bool:
    from sfspec.compiler.budget import state_floats

    return state_floats(checked.plan) > 0


def _format_train(t: dict) -> str:
    """The train settings as summary lines; values the rule chose are marked."""

    def show(key: str) -> str:
        value = f"{t[key]:,}" if isinstance(t[key], int) and not isinstance(t[key], bool) else str(t[key])
        return f"{key} {value}" + (" *" if key in t["derived"] else "")

    lines = [
        f"train: {', '.join(show(k) for k in ('steps', 'rollout', 'epochs', 'minibatches', 'lr', 'lr_schedule'))}",
        f"  batch {t['batch']:,} steps per update ({t['num_envs']:,} envs), minibatch {t['minibatch']:,}; "
        f"threads {t['threads']} on CPU (train.threads: {t['threads_setting']})",
    ]
    if t["derived"]:
        lines.append(f"  * derived from env.num_envs ({t['num_envs']:,}); docs/runtime.md")
    return "\n".join(lines)


# What --set may change when resuming: everything else is part of what the checkpoint was trained as.
RESUMABLE = (("train", "steps"), ("train", "log_interval"), ("train", "checkpoint_interval"), ("train", "device"))


def _stored_spec(data: Any, where: str, overrides: list[str]):
    """A spec stored in a run or a bundle, with overrides, validated like a spec file (plugin rule included)."""
    import copy

    from sfspec import pipeline
    from sfspec.errors import Location
    from sfspec.spec.loader import LoadedSpec, SourceMap, apply_overrides
    from sfspec.spec.validate import validate_spec

    smap = SourceMap(values={(): Location(where)})
    loaded = apply_overrides(LoadedSpec(copy.deepcopy(data), smap, where), overrides)
    validate_spec(loaded)
    return pipeline.check(loaded)  # the env id too: a stored 'module:Env' id must not import its module


def _load_run_spec(run: str, overrides: list[str]):
    """The spec a run was trained with (its checkpoint's copy), with overrides, validated again."""
    from sfspec.runtime.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run)
    return _stored_spec(checkpoint["spec"], f"{run} (the run's spec)", overrides), checkpoint


def _changed_paths(before: Any, after: Any, path: tuple = ()) -> list[tuple]:
    """Paths of the leaves that differ between two spec trees."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = dict.fromkeys([*before, *after])
        return [p for k in keys for p in _changed_paths(before.get(k, _MISSING), after.get(k, _MISSING), (*path, k))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [p for i, (b, a) in enumerate(zip(before, after)) for p in _changed_paths(b, a, (*path, i))]
    return [] if before == after else [path]


_MISSING = object()


def _refuse_unresumable_overrides(saved: dict, loaded) -> None:
    """--set on resume may extend or re-schedule a run, never change what it was trained as."""
    from sfspec.errors import SpecIssue, format_path

    issues = []
    for path in _changed_paths(saved, loaded.data):
        if not any(path[: len(allowed)] == allowed for allowed in RESUMABLE):
            shown = ", ".join(format_path(a) for a in RESUMABLE)
            message = (
                f"cannot change {format_path(path)} when resuming: the run was trained with it "
                f"(resumable: {shown})"
            )
            issues.append(SpecIssue(loaded.source_map.locate(path), path, message))
    if issues:
        raise SpecError(issues)


def _resume_spec(run: Path, overrides: list[str]):
    """The spec to continue a run with, and whether the run already finished."""
    from sfspec import pipeline
    from sfspec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from sfspec.runtime.config import LEGACY_DEFAULTS, TrainConfig, with_derived_defaults

    if not (run / CHECKPOINT_NAME).exists():
        if not (run / "spec.yaml").is_file():
            raise UsageError(f"{run}: no run here (neither {CHECKPOINT_NAME} nor spec.yaml)")
        print(f"sfspec: {run} was stopped before its first checkpoint; starting it again from step 0", file=sys.stderr)
        return pipeline.check(pipeline.load(run / "spec.yaml", overrides)), False
    checkpoint = load_checkpoint(run)
    checked = _stored_spec(checkpoint["spec"], f"{run} (the run's spec)", overrides)
    loaded = checked.loaded
    _refuse_unresumable_overrides(checkpoint["spec"], loaded)
    # Runs write the derived train: values into their spec; one without them predates the rule.
    loaded.data = with_derived_defaults(loaded.data, LEGACY_DEFAULTS)
    steps, budget = checkpoint["global_step"], TrainConfig.from_spec(loaded.data).steps
    finished = bool(checkpoint.get("finished")) and steps >= budget
    if finished:
        print(
            f"{run} already finished at step {steps:,} (train.steps: {budget:,}); "
            f"to train longer: sfspec train --resume {shlex.quote(str(run))} --set train.steps={2 * steps}"
        )
    return checked, finished


def _torchrun_command(args: argparse.Namespace) -> list[str]:
    """``sfspec train --nproc N ...`` as the torchrun command that starts N ranks of the same training."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    command += ["-m", "sfspec", "train"]
    if args.spec:
        command.append(args.spec)
    for flag, value in (("--run-dir", args.run_dir), ("--device", args.device), ("--resume", args.resume)):
        if value:
            command += [flag, value]
    for module in args.plugin:
        command += ["--plugin", module]
    for override in args.overrides:
        command += ["--set", override]
    return [*command, "-q"] if args.quiet else command


def cmd_train(args: argparse.Namespace) -> int:
    """Train a spec (or continue a run) with the algorithm its train: section names."""
    if args.nproc is not None and "RANK" not in os.environ:  # the launcher; torchrun's ranks train
        if args.nproc < 1:
            raise UsageError(f"--nproc {args.nproc}: give at least 1 process")
        return subprocess.call(_torchrun_command(args))
    from sfspec import pipeline
    from sfspec.runtime.config import RunnerConfig, num_envs_of, with_derived_defaults
    from sfspec.runtime.threads import choose_threads, set_threads
    from sfspec.runtime.train import default_run_dir, resolve_device, train

    spec_path = None
    if args.resume:
        run_dir = Path(args.resume)
        if run_dir.is_file():  # a checkpoint file names its run
            run_dir = run_dir.parent
        checked, finished = _resume_spec(run_dir, args.overrides)
        if finished:
            return 0
        name = run_dir.name
    elif args.spec:
        checked = pipeline.check(pipeline.load(args.spec, args.overrides))
        run_dir, name = Path(args.run_dir) if args.run_dir else default_run_dir(args.spec), Path(args.spec).stem
        spec_path = args.spec
    else:
        raise UsageError("give a SPEC to train, or --resume RUN")
    loaded = checked.loaded
    loaded.data = with_derived_defaults(loaded.data)  # the rule's values, written into the run's spec.yaml
    cfg = RunnerConfig.from_spec(loaded.data)
    device = resolve_device(args.device or cfg.device)
    params, cuda = checked.memory.params.total, device.type == "cuda"
    set_threads(choose_threads(cfg.threads, params, num_envs_of(loaded.data), _recurrent(checked), cuda))
    result = train(
        loaded.data,
        run_dir,
        args.device,
        args.quiet,
        bool(args.resume),
        loaded.source_map,
        name,
        spec_path=spec_path,
        plan=checked.plan,
    )
    run = shlex.quote(str(run_dir))
    if result.interrupted:
        print(
            f"sfspec: interrupted at step {result.global_step:,}; checkpoint saved in {run_dir}; "
            f"continue with: sfspec train --resume {run}",
            file=sys.stderr,
        )
        return 130
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        print(f"trained {result.global_step:,} steps; run: {run_dir}")
        print(f"next: sfspec eval {run}  |  sfspec plot {run}  |  sfspec export {run}")
    return 0


def _bundle_spec(bundle: Path) -> Any:
    """The spec stored in a bundle's policy.json."""
    from sfspec.export.bundle import ExportError

    try:
        return json.loads((bundle / "policy.json").read_text(encoding="utf-8"))["spec"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ExportError(f"{bundle}/policy.json is unreadable or not a bundle's ({problem})") from None


def _load_weights(model, checkpoint: dict, source: str) -> None:
    """Load a checkpoint's weights into a model built from its (possibly overridden) spec."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"{source}: the overrides change the model the run was trained with ({first})") from None


def _eval_one(path: str, args: argparse.Namespace) -> dict:
    """Evaluate one run, checkpoint or bundle; the summary ``--json`` prints."""
    from sfspec.compiler.build import build_from_plan
    from sfspec.export.evaluate import evaluate_bundle
    from sfspec.runtime.config import RunnerConfig, num_envs_of
    from sfspec.runtime.evaluate import evaluate, record_video
    from sfspec.runtime.threads import apply_to_model
    from sfspec.runtime.train import resolve_device

    if (Path(path) / "policy.json").is_file():  # an exported bundle, run by onnxruntime
        spec = _stored_spec(_bundle_spec(Path(path)), f"{path} (the bundle's spec)", args.overrides).loaded.data
        seed = RunnerConfig.from_spec(spec).seed
        return evaluate_bundle(Path(path), spec["env"], args.episodes, seed, args.backend).summary()
    checked, checkpoint = _load_run_spec(path, args.overrides)
    loaded = checked.loaded
    spec = loaded.data
    device = resolve_device(args.device or "cpu")
    model = build_from_plan(checked.plan, loaded.source_map).to(device)  # the plan the check made
    _load_weights(model, checkpoint, path)
    runner = RunnerConfig.from_spec(spec)
    apply_to_model(runner.threads, model, min(args.episodes, num_envs_of(spec)), device)
    seed = runner.seed
    result = evaluate(model, spec["env"], args.episodes, seed, device).summary()
    if args.video:
        import gymnasium as gym

        try:
            video_dir = Path(args.video) / Path(path).name if len(args.runs) > 1 else Path(args.video)  # one per run
            result["video"] = str(record_video(model, spec["env"], video_dir, seed, device))
        except gym.error.DependencyNotInstalled as exc:
            raise UsageError(f"--video: {exc}") from None
    return result


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate runs' policies (or exported bundles) deterministically on fresh environments."""
    from sfspec.export.formats import EXPORT_FORMATS

    backends = EXPORT_FORMATS.runner_backends()  # read after plugins loaded: a plugin's format counts
    if args.backend not in backends:
        raise UsageError(f"--backend: '{args.backend}' is not one of {', '.join(backends)}")
    for path in args.runs:
        result = _eval_one(path, args)
        if args.json:
            print(json.dumps(result if len(args.runs) == 1 else {"run": path, **result}))
            continue
        prefix = f"{path}: " if len(args.runs) > 1 else ""
        print(
            f"{prefix}{result['episodes']} episodes: return {result['return_mean']:.2f} +- "
            f"{result['return_std']:.2f} (min {result['return_min']:.2f}, max {result['return_max']:.2f}), "
            f"length {result['length_mean']:.1f}"
        )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot learning curves of runs."""
    from sfspec.runtime.plot import plot_runs

    try:
        out = plot_runs(args.runs, args.out, args.metric)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export runs, checkpoints or bare specs as policy bundles (each run into its own RUN/bundle)."""
    if len(args.sources) > 1 and args.out:
        raise UsageError(
            f"--out names one bundle, but {len(args.sources)} sources were given ({', '.join(args.sources)}): "
            "export one at a time, or leave out --out to write each run's bundle into RUN/bundle"
        )
    for source in args.sources:
        _export_one(Path(source), args)
    return 0


def _export_one(source: Path, args: argparse.Namespace) -> None:
    """Export one run, checkpoint or bare spec; print where the bundle went and how well it matched."""
    from sfspec import pipeline
    from sfspec.export.bundle import export_bundle
    from sfspec.export.config import ExportConfig, ExportConfigError
    from sfspec.runtime.config import RunnerConfig
    from sfspec.runtime.threads import apply_to_model
    from sfspec.runtime.train import seed_everything

    if source.suffix in (".yaml", ".yml"):
        loaded = pipeline.load(source, args.overrides)
        seed_everything(RunnerConfig.from_spec(loaded.data).seed)
        model = pipeline.compile_spec(loaded)  # freshly initialised: for testing a deployment pipeline
        out = Path(args.out or f"{source.stem}-bundle")
    else:
        checked, checkpoint = _load_run_spec(str(source), args.overrides)
        loaded, model = checked.loaded, pipeline.compile_checked(checked)
        _load_weights(model, checkpoint, str(source))
        out = Path(args.out or ((source if source.is_dir() else source.parent) / "bundle"))
    try:  # the spec's export: section (schema defaults), then what the command line says
        config = ExportConfig.from_spec(loaded.data).override(
            formats=args.formats.split(",") if args.formats else None,
            opset=args.opset or None,
            batch=args.batch or None,
            with_value=args.with_value or None,
            legacy_onnx=args.legacy_onnx,
        )
    except ExportConfigError as exc:
        raise UsageError(f"--{exc.field.replace('_', '-')}: {exc.problem}") from None
    apply_to_model(RunnerConfig.from_spec(loaded.data).threads, model, 1)  # tracing and parity run batch 1 or so
    report = export_bundle(model, loaded.data, out, config=config)
    worst = ", ".join(f"{k} {v:.2g}" for k, v in report.worst.items())
    print(f"bundle: {out} ({', '.join(report.files)}); parity worst abs error: {worst}")
    for fmt, ties in report.near_ties.items():
        if ties:  # legitimate float32 differences, but a user deploying the policy should know of them
            print(f"note: {fmt}: {len(ties)} discrete near-ties (not failures); first: {ties[0]}")


def cmd_check(args: argparse.Namespace) -> int:
    """Verify bundles' files, replay their golden inputs through their artifacts; report errors and latency."""
    from sfspec.export.check import check_bundle

    reports = {bundle: check_bundle(bundle, trust=args.trust) for bundle in args.bundles}
    status = 0 if all(r.get("mismatches", 0) == 0 for rep in reports.values() for r in rep.values()) else 1
    if args.json:
        print(json.dumps(reports[args.bundles[0]] if len(reports) == 1 else reports, indent=2))
        return status
    for bundle, report in reports.items():
        if len(reports) > 1:
            print(f"{bundle}:")
        _print_check(report)
    return status


def _print_check(report: dict) -> None:
    """One bundle's check, a line per artifact."""
    for fmt, r in report.items():
        if "skipped" in r:
            print(f"{fmt:12} skipped: {r['skipped']}")
            continue
        latency = "n/a" if r["latency_median_ms"] is None else f"{r['latency_median_ms']:.3f} ms"
        p99 = "n/a" if r["latency_p99_ms"] is None else f"{r['latency_p99_ms']:.3f} ms"
        print(
            f"{fmt:12} worst error {r['worst_abs_error']:.3g}  mismatches {r['mismatches']}  "
            f"near-ties {r['near_ties']}  batch-1 latency median {latency}, p99 {p99}"
        )
        for key in ("first_mismatch", "first_near_tie"):
            if key in r:
                print(f"{'':12} {key.replace('_', ' ')}: {r[key]}")


class UsageError(Exception):
    """A command-line mistake that is not in a spec."""


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "validate": (cmd_validate, "check spec files against the schema and their environments"),
    "schema": (cmd_schema, "print the spec JSON Schema"),
    "summary": (cmd_summary, "print the layers of the model a spec describes"),
    "train": (cmd_train, "train a spec with PPO"),
    "eval": (cmd_eval, "evaluate trained runs (or bundles) deterministically"),
    "plot": (cmd_plot, "plot learning curves of runs"),
    "export": (cmd_export, "write a deployable policy bundle (ONNX, TorchScript, torch.export)"),
    "check": (cmd_check, "replay a bundle's golden inputs; report errors and latency"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(prog="sfspec", description="YAML spec -> trained, deployable policy.")
    parser.add_argument("--version", action="version", version=f"sfspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help=COMMANDS["validate"][1], description=COMMANDS["validate"][1])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--no-env", action="store_true", help="skip the checks that need the environment's spaces")
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    _add_common(p)

    p = sub.add_parser("schema", help=COMMANDS["schema"][1], description=COMMANDS["schema"][1])
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    _add_common(p, overrides=False)

    p = sub.add_parser("summary", help=COMMANDS["summary"][1], description=COMMANDS["summary"][1])
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="print JSON (total trainable parameters: params_total)")
    _add_common(p)

    p = sub.add_parser("train", help=COMMANDS["train"][1], description=COMMANDS["train"][1])
    p.add_argument("spec", metavar="SPEC", nargs="?")
    p.add_argument("--run-dir", metavar="DIR", help="where to write the run (default: runs/<spec>-<time>)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the spec's train.device)")
    p.add_argument("--resume", metavar="RUN", help="continue a run from its last checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="data-parallel: start N ranks on this machine with torchrun (docs/distributed.md)",
    )
    _add_common(p)

    p = sub.add_parser("eval", help=COMMANDS["eval"][1], description=COMMANDS["eval"][1])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories, checkpoint files or bundles")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON: return_mean, return_std, episodes, ...")
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--video", metavar="DIR", help="also record one episode to DIR (needs moviepy)")
    p.add_argument("--backend", default="onnx", help="for a bundle: onnx (default), torchscript, or a plugin's format")
    _add_common(p)

    p = sub.add_parser("plot", help=COMMANDS["plot"][1], description=COMMANDS["plot"][1])
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", default="learning_curves.png", help="PNG file to write")
    p.add_argument("--metric", default="return_mean", help="metric to plot against steps")
    _add_common(p, overrides=False)

    _add_export_commands(sub)
    return parser


def _add_export_commands(sub: Any) -> None:
    """The export and check commands; formats and defaults come from the formats registry and the schema."""
    from sfspec.export.formats import EXPORT_FORMATS  # torch-free: the registered formats
    from sfspec.spec.schema import schema_default

    p = sub.add_parser("export", help=COMMANDS["export"][1], description=COMMANDS["export"][1])
    p.add_argument("sources", nargs="+", metavar="RUN|CHECKPOINT|SPEC", help="one or more; each run into RUN/bundle")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="bundle directory (default: RUN/bundle or <spec>-bundle); an earlier bundle there is replaced "
        "only once the new one has passed the parity gate",
    )
    p.add_argument(
        "--formats",
        help=f"comma-separated: {','.join(EXPORT_FORMATS.names())} (default: the spec's export.formats, "
        f"else {','.join(EXPORT_FORMATS.default_names())})",
    )
    p.add_argument("--opset", type=int, help=f"ONNX opset (default {schema_default('export', 'opset')})")
    p.add_argument("--batch", help=f"dynamic or a fixed batch size (default {schema_default('export', 'batch')})")
    p.add_argument("--with-value", action="store_true", help="also output the critic's value")
    p.add_argument("--legacy-onnx", action="store_true", help="use the TorchScript-based ONNX exporter")
    _add_common(p)

    p = sub.add_parser("check", help=COMMANDS["check"][1], description=COMMANDS["check"][1])
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="one or more bundle directories")
    p.add_argument("--json", action="store_true", help="JSON (one bundle: its report; several: by bundle)")
    p.add_argument(
        "--trust",
        action="store_true",
        help="also load and run "
        + " and ".join(f"{f.file} ({f.title})" for f in EXPORT_FORMATS.all() if f.runs_code)
        + ": they are programs, so only for bundles whose author you trust (checksums are verified either way)",
    )
    _add_common(p, overrides=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        load_plugins(args.plugin)
        return COMMANDS[args.command][0](args)
    except SpecError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        count = len(exc.issues)
        print(f"sfspec: {count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except PluginError as exc:
        print(f"sfspec: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except UsageError as exc:
        print(f"sfspec: {exc}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    except OSError as exc:  # a full disk, a read-only directory: the message names the file
        print(f"sfspec: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from sfspec.export.bundle import ExportError
        from sfspec.runtime.checkpoint import CheckpointError
        from sfspec.runtime.rundir import RunDirError
        from sfspec.runtime.train import TrainingError
        from sfspec.runtime.vec_env import EnvStepError

        if isinstance(exc, (CheckpointError, TrainingError, EnvStepError, ExportError)):
            print(f"sfspec: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, RunDirError):
            print(f"sfspec: {exc}", file=sys.stderr)
            return EXIT_SPEC_ERROR
        raise
    except KeyboardInterrupt:
        print("sfspec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
