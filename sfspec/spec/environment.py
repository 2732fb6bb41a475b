"""The environment a spec names: its observation and action spaces.

A spec is data: an id of the form ``module:Env-v0`` makes gymnasium import ``module``, so sfspec
only accepts it when that module was loaded as a plugin (``--plugin module`` or an entry point).
"""

from __future__ import annotations

from typing import Any

from sfspec.envs import catalogue
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.spec.loader import SourceMap

TENSOR_ENV_PREFIX = "sfspec/"


def env_spaces(env_cfg: dict, smap: SourceMap) -> tuple[Any, Any]:
    """(observation space, action space) of one environment the spec describes."""
    env_id = env_cfg["id"]
    path = ("env", "id")
    if catalogue.is_tensor_env(env_id):  # bundled, or registered by a plugin whatever its namespace
        return _guard(lambda: catalogue.env_spaces(env_id, env_cfg.get("kwargs", {})), env_id, smap)
    if env_id.startswith(TENSOR_ENV_PREFIX):
        known = catalogue.tensor_env_ids()
        message = f"unknown sfspec environment '{env_id}'{did_you_mean(env_id, known)}"
        raise SpecError(SpecIssue(smap.locate(path), path, f"{message}; known: {', '.join(known)}"))
    check_env_module(env_id, smap)
    import gymnasium as gym

    env = _guard(lambda: gym.make(env_id, **env_cfg.get("kwargs", {})), env_id, smap)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


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
