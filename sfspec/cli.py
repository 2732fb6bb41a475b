"""The ``sfspec`` command line: validate, schema, summary (train, eval, export come with the runtime).

Spec errors print as ``file:line:col: path: message`` and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

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
    from sfspec.compiler.build import compile_model_with_rows
    from sfspec.summary import format_summary, summary_data, to_json

    loaded = pipeline.load(args.spec, args.overrides)
    checked = pipeline.check(loaded)
    env_id = loaded.data["env"]["id"]
    model, rows = compile_model_with_rows(
        loaded.data, checked.obs_space, checked.action_space, loaded.source_map, env_id
    )
    data = summary_data(env_id, model, rows)
    print(to_json(data) if args.json else format_summary(data))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "validate": (cmd_validate, "check spec files against the schema and their environments"),
    "schema": (cmd_schema, "print the spec JSON Schema"),
    "summary": (cmd_summary, "print the layers of the model a spec describes"),
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
    return parser


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
    except KeyboardInterrupt:
        print("sfspec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
