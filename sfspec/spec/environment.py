"""The environment a spec names: its observation and action spaces, and the parameters it may randomise.

A spec is data: an id of the form ``module:Env-v0`` makes gymnasium import ``module``, so sfspec
only accepts it when that module was loaded as a plugin (``--plugin module`` or an entry point).
"""

from __future__ import annotations

import math
from typing import Any

from sfspec.envs import catalogue
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.spec.loader import SourceMap

TENSOR_ENV_PREFIX = "sfspec/"


def env_spaces(env_cfg: dict, smap: SourceMap) -> tuple[Any, Any]:
    """(observation space, action space) of one environment the spec describes."""
    env_id = env_cfg["id"]
    path = ("env", "id")
    if env_cfg.get("vectorization") == "envpool":
        spaces = envpool_spaces(env_cfg, smap)
        check_randomize(env_cfg, smap)
        check_robustness(env_cfg, spaces[0], smap)
        return spaces
    if catalogue.is_tensor_env(env_id):  # bundled, or registered by a plugin whatever its namespace
        check_randomize(env_cfg, smap)
        spaces = _guard(lambda: catalogue.env_spaces(env_id, env_cfg.get("kwargs", {})), env_id, smap)
        check_robustness(env_cfg, spaces[0], smap)
        return spaces
    if env_id.startswith(TENSOR_ENV_PREFIX):
        known = catalogue.tensor_env_ids()
        message = f"unknown sfspec environment '{env_id}'{did_you_mean(env_id, known)}"
        raise SpecError(SpecIssue(smap.locate(path), path, f"{message}; known: {', '.join(known)}"))
    check_env_module(env_id, smap)
    import gymnasium as gym

    env = _guard(lambda: gym.make(env_id, **env_cfg.get("kwargs", {})), env_id, smap)
    try:
        spaces = env.observation_space, env.action_space
    finally:
        env.close()
    check_randomize(env_cfg, smap)  # after the id is known to exist, so a misspelt id is named first
    check_robustness(env_cfg, spaces[0], smap)
    return spaces


def check_randomize(env_cfg: dict, smap: SourceMap) -> None:
    """``env.randomize``: a tensor env's own parameters, each with a finite ``[low, high]``, low <= high."""
    ranges = env_cfg.get("randomize") or {}
    env_id, path = env_cfg["id"], ("env", "randomize")
    if not ranges:
        return
    if not catalogue.is_tensor_env(env_id):
        message = (
            f"only tensor environments (sfspec/..., or registered with register_tensor_env) can randomise "
            f"their parameters; '{env_id}' is a gymnasium environment"
        )
        twins = [tensor_id for tensor_id, gym_id in catalogue.gymnasium_twins().items() if gym_id == env_id]
        message += f" (its tensor twin '{twins[0]}' can)" if twins else ""
        raise SpecError(SpecIssue(smap.locate(path, key=True), path, message))
    nominal = catalogue.env_parameters(env_id)
    issues = [issue for name, bounds in ranges.items() for issue in _range_issues(env_id, nominal, name, bounds, smap)]
    if issues:
        raise SpecError(issues)


def _range_issues(env_id: str, nominal: dict[str, float], name: str, bounds: list, smap: SourceMap) -> list[SpecIssue]:
    """What is wrong with one ``env.randomize`` entry (nothing when it is a known parameter's sound range)."""
    path = ("env", "randomize", name)
    if name not in nominal:
        known = ", ".join(f"{k} (nominal {v:g})" for k, v in nominal.items()) or "it exposes none"
        message = f"'{env_id}' has no parameter '{name}'{did_you_mean(name, nominal)}; its parameters: {known}"
        return [SpecIssue(smap.locate(path, key=True), path, message)]
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        return [SpecIssue(smap.locate(path), path, f"expected finite numbers [low, high], got {bounds}")]
    if low > high:
        message = f"reversed range {bounds}: low must not exceed high (did you mean [{high}, {low}]?)"
        return [SpecIssue(smap.locate(path), path, message)]
    problem = catalogue.outside_minimum(low, catalogue.parameter_minimum(env_id, name))
    if problem:  # a negative mass or length would train on meaningless dynamics without any error
        message = f"{name} {problem} (it is a physical quantity), got the range {bounds}"
        return [SpecIssue(smap.locate(path), path, message)]
    return []


def check_robustness(env_cfg: dict, obs_space: Any, smap: SourceMap) -> None:
    """``env.noise`` and ``env.delay``: known float inputs with sound stds, ordered delays shorter than an episode."""
    noise = env_cfg.get("noise") or {}
    issues = [issue for name, entry in noise.items() for issue in _noise_issues(name, entry, obs_space, smap)]
    delays = env_cfg.get("delay") or {}
    limit = _episode_limit(env_cfg) if delays else None
    issues += [issue for which, value in delays.items() for issue in _delay_issues(which, value, limit, smap)]
    if issues:
        raise SpecError(issues)


def _noise_issues(name: str, entry: dict, obs_space: Any, smap: SourceMap) -> list[SpecIssue]:
    """What is wrong with one ``env.noise`` entry (nothing when it names a float input with fitting stds)."""
    import numpy as np
    from gymnasium import spaces

    from sfspec.compiler.spaces import describe_space, flatten_space

    path = ("env", "noise", name)
    leaves = flatten_space(obs_space)
    if name not in leaves:
        message = f"no observation input '{name}'{did_you_mean(name, leaves)}; the inputs: {', '.join(leaves)}"
        return [SpecIssue(smap.locate(path, key=True), path, message)]
    leaf = leaves[name]
    if not isinstance(leaf, spaces.Box) or not np.issubdtype(leaf.dtype, np.floating):
        message = f"'{name}' is {describe_space(leaf)}, a discrete input: noise applies to float (Box) inputs only"
        return [SpecIssue(smap.locate(path, key=True), path, message)]
    std, size = entry["std"], int(np.prod(leaf.shape))
    if isinstance(std, list) and len(std) != size:
        std_path = (*path, "std")
        message = (
            f"{len(std)} std values for '{name}' of shape {tuple(leaf.shape)}: give one number for every component, "
            f"or {size} (one per component, flattened)"
        )
        return [SpecIssue(smap.locate(std_path), std_path, message)]
    return []


def _episode_limit(env_cfg: dict) -> int | None:
    """The env's time limit in steps (``max_episode_steps`` in its kwargs, else its default), when known."""
    kwargs = env_cfg.get("kwargs") or {}
    if isinstance(kwargs.get("max_episode_steps"), int):
        return kwargs["max_episode_steps"]
    env_id = env_cfg["id"]
    if catalogue.is_tensor_env(env_id):  # bundled: without torch
        return catalogue.episode_limit(env_id)
    import gymnasium as gym

    return gym.spec(env_id).max_episode_steps


def _delay_issues(which: str, value: int | list, limit: int | None, smap: SourceMap) -> list[SpecIssue]:
    """What is wrong with ``env.delay.observation`` or ``env.delay.action``."""
    path = ("env", "delay", which)
    low, high = (value[0], value[1]) if isinstance(value, list) else (value, value)
    if low > high:
        message = f"reversed range {value}: low must not exceed high (did you mean [{high}, {low}]?)"
        return [SpecIssue(smap.locate(path), path, message)]
    if limit is not None and high >= limit:
        message = f"a delay of {high} steps is not shorter than an episode ({limit} steps at most)"
        return [SpecIssue(smap.locate(path), path, message)]
    return []


def check_env_module(env_id: str, smap: SourceMap) -> None:
    """Refuse an id that would import a module the user did not load as a plugin."""
    if ":" not in env_id:
        return
    from sfspec.plugins import loaded_plugins

    module = env_id.split(":", 1)[0]
    if not any(module == p or module.startswith(p + ".") for p in loaded_plugins()):
        path = ("env", "id")
        raise SpecError(
            SpecIssue(
                smap.locate(path),
                path,
                (
                    f"'{env_id}' names the Python module '{module}'; a spec never imports code: "
                    f"load it with --plugin {module} (or an 'sfspec.plugins' entry point)"
                ),
            )
        )


def env_cfg_has_kwargs(smap: SourceMap) -> bool:
    """Whether the spec wrote ``env.kwargs`` (so an error can point at them)."""
    return ("env", "kwargs") in smap.values


def _guard(make, env_id: str, smap: SourceMap):
    """Run an environment constructor, turning its failure into a positioned spec error."""
    import gymnasium as gym

    path = ("env", "id")
    try:
        return make()
    except gym.error.Error as exc:
        message = str(exc)
        if isinstance(exc, (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound)):
            known = list(gym.registry)
            message = f"unknown environment '{env_id}'{did_you_mean(env_id, known)}: {exc}"
        raise SpecError(SpecIssue(smap.locate(path), path, message)) from None
    except MemoryError:  # env.kwargs that make its spaces enormous (a 10**6-cell grid)
        kw_path = ("env", "kwargs") if env_cfg_has_kwargs(smap) else path
        message = f"cannot make '{env_id}': its observation or action space does not fit in memory"
        raise SpecError(SpecIssue(smap.locate(kw_path), kw_path, message)) from None
    except TypeError as exc:  # usually an unexpected keyword in env.kwargs
        kw_path = ("env", "kwargs")
        raise SpecError(SpecIssue(smap.locate(kw_path), kw_path, f"cannot make '{env_id}': {exc}")) from None
    except Exception as exc:  # the environment's own failure: say which and why, no traceback
        raise SpecError(
            SpecIssue(smap.locate(path), path, f"cannot make '{env_id}': {type(exc).__name__}: {exc}")
        ) from None


# EnvPool's own settings that sfspec sets from the spec (env.num_envs, train.seed), never env.kwargs.
ENVPOOL_SET_BY_SFSPEC = ("num_envs", "batch_size", "seed", "env_seed", "max_num_players", "base_path")
# EnvPool's engine settings, not the task's: passed to EnvPool only (gymnasium's env has no such option).
ENVPOOL_ENGINE_KWARGS = ("num_threads", "thread_affinity_offset")


def envpool_spaces(env_cfg: dict, smap: SourceMap) -> tuple[Any, Any]:
    """(observation, action) spaces of a gymnasium id run by EnvPool: installed, known to both, the same task."""
    env_id, kwargs = env_cfg["id"], dict(env_cfg.get("kwargs") or {})
    if catalogue.is_tensor_env(env_id) or env_id.startswith(TENSOR_ENV_PREFIX):
        path = ("env", "vectorization")
        message = f"'{env_id}' is a tensor environment, batched by itself: remove vectorization: envpool"
        raise SpecError(SpecIssue(smap.locate(path), path, message))
    envpool = import_envpool(smap)
    supported = envpool_gymnasium_ids(envpool)
    if env_id not in supported:
        _envpool_refuses_id(env_id, envpool, supported, smap)
    refused = sorted(set(kwargs) & set(ENVPOOL_SET_BY_SFSPEC))
    if refused:
        kw_path = ("env", "kwargs", refused[0])
        message = f"'{refused[0]}' is set by sfspec (from env.num_envs and train.seed), not in env.kwargs"
        raise SpecError(SpecIssue(smap.locate(kw_path, key=True), kw_path, message))
    pool = _envpool_task_spaces(envpool, env_id, kwargs, smap)
    reference = _gymnasium_spaces(env_id, {k: v for k, v in kwargs.items() if k not in ENVPOOL_ENGINE_KWARGS})
    if reference is None:  # gymnasium cannot build it here (Box2D missing, v2/v3 MuJoCo): EnvPool ships its own
        return pool
    _check_same_task(env_id, pool, reference, smap)
    return reference  # gymnasium's spaces (their dtypes), so the model and its bundle match a gymnasium run's


def _envpool_task_spaces(envpool: Any, env_id: str, kwargs: dict, smap: SourceMap) -> tuple[Any, Any]:
    """EnvPool's spaces for the task with these kwargs, or a spec error at ``env.kwargs`` naming its options."""
    import warnings

    try:
        with warnings.catch_warnings():  # EnvPool's float64 bounds cast to a float32 Box: expected, not news
            warnings.simplefilter("ignore", UserWarning)
            pool_spec = envpool.make_spec(env_id, **kwargs)
            return pool_spec.gymnasium_observation_space, pool_spec.gymnasium_action_space
    except (TypeError, ValueError) as exc:  # an option EnvPool's task does not have, or a bad value
        kw_path = ("env", "kwargs")
        options = ", ".join(k for k in envpool.make_spec(env_id).config._fields if k not in ENVPOOL_SET_BY_SFSPEC)
        message = f"EnvPool's '{env_id}' refuses these kwargs: {exc}; its options: {options}"
        raise SpecError(SpecIssue(smap.locate(kw_path), kw_path, message)) from None


def import_envpool(smap: SourceMap) -> Any:
    """The ``envpool`` module, or a spec error at ``env.vectorization`` saying how to get it."""
    path = ("env", "vectorization")
    try:
        import envpool
    except ImportError as exc:
        message = (
            f"vectorization 'envpool' needs the envpool package, which cannot be imported here ({exc}): "
            "pip install 'sfspec[envpool]' (Linux, Python >= 3.11), or use vectorization: async"
        )
        raise SpecError(SpecIssue(smap.locate(path), path, message)) from None
    return envpool


def envpool_gymnasium_ids(envpool: Any) -> list[str]:
    """The ids EnvPool runs under gymnasium's own name (its other ids are its own tasks, e.g. preprocessed Atari).

    Namespaced ids (gymnasium's jax ``phys2d/``, ``tabular/``) are left out: EnvPool's are other implementations.
    """
    import gymnasium as gym

    return sorted(i for i in set(envpool.list_all_envs()) & set(gym.registry) if "/" not in i)


def _envpool_refuses_id(env_id: str, envpool: Any, supported: list[str], smap: SourceMap) -> None:
    """Raise the spec error for an id EnvPool cannot run as gymnasium's task."""
    path = ("env", "vectorization")
    if env_id in envpool.list_all_envs():
        message = (
            f"'{env_id}' is EnvPool's own id, not a gymnasium one (EnvPool's Atari ids, for instance, apply "
            "their own preprocessing): sfspec runs EnvPool only for the gymnasium ids it reproduces"
        )
    else:
        message = (
            f"EnvPool has no '{env_id}'{did_you_mean(env_id, supported)}; use vectorization: async for it, "
            f"or one of EnvPool's gymnasium ids: {', '.join(supported)}"
        )
    raise SpecError(SpecIssue(smap.locate(path), path, message))


def _gymnasium_spaces(env_id: str, kwargs: dict) -> tuple[Any, Any] | None:
    """gymnasium's own spaces for the id, or None when gymnasium cannot build it here."""
    import gymnasium as gym

    try:
        env = gym.make(env_id, **kwargs)
    except Exception:  # a missing dependency, a retired version, or an option only EnvPool has
        return None
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _check_same_task(env_id: str, pool: tuple[Any, Any], reference: tuple[Any, Any], smap: SourceMap) -> None:
    """Refuse an EnvPool task whose spaces are not gymnasium's (same kind, same shape): another task by that name."""
    for what, mine, theirs in zip(("observation", "action"), pool, reference):
        if type(mine) is not type(theirs) or getattr(mine, "shape", None) != getattr(theirs, "shape", None):
            path = ("env", "vectorization")
            message = (
                f"EnvPool's '{env_id}' has the {what} space {mine}, gymnasium's has {theirs}: not the same task; "
                "use vectorization: async for it"
            )
            raise SpecError(SpecIssue(smap.locate(path), path, message))
