"""Run a policy bundle in a robot node: load it, ``reset()`` at mission start, ``act(obs)`` each tick.

The runner holds the policy's state itself (recurrent memory, observation histories, the last
action), so a controller never needs to know its layout: ``reset`` marks rows whose next ``act``
starts an episode, and the graph's own ``reset`` input does what each state needs.
Backends: onnxruntime (``"onnx"``, the default: an ONNX model is data, not code) or TorchScript
(``"torchscript"``: a program; choosing it means trusting whoever made the bundle). Neither needs
sfspec's compiler or the spec's environment. The artifact's size and SHA-256 are checked against
``policy.json`` before it is loaded, and ``act`` refuses observations that do not match the
bundle's layout exactly (``validate=False`` skips those checks where every microsecond counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sfspec.export.artifact import open_artifact
from sfspec.export.errors import BundleError, ObservationError
from sfspec.export.formats import EXPORT_FORMATS
from sfspec.export.integrity import read_manifest

_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "int8": np.int8, "uint8": np.uint8}


class PolicyRunner:
    """A loaded bundle with its own memory; ``act`` maps raw observations to env actions."""

    def __init__(
        self, bundle: str | Path, backend: str = "onnx", batch: int = 1, threads: int = 1, validate: bool = True
    ):
        backends = EXPORT_FORMATS.runner_backends()
        if backend not in backends:
            raise ValueError(f"backend must be {' or '.join(map(repr, backends))}, not {backend!r}")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, not {batch!r}")
        self.bundle = Path(bundle)
        self.meta = read_manifest(self.bundle)
        if self.meta["batch"] != "dynamic" and self.meta["batch"] != batch:
            raise ValueError(f"{self.bundle} was exported for batch {self.meta['batch']}, not {batch}")
        self.backend, self.batch, self.validate = backend, batch, validate
        self.inputs, self.outputs = self.meta["inputs"], self.meta["outputs"]
        self.obs, self.state = self.meta["observations"], self.meta["state"]
        self._artifact = open_artifact(self.bundle, self.meta, backend, threads)
        self.reset()

    def reset(self, rows: list[int] | None = None) -> None:
        """Start a new episode in every row (mission start), or in the given rows only, at the next ``act``."""
        if rows is None:
            self._states = [np.zeros([self.batch, *s["shape"][1:]], dtype=np.float32) for s in self.state]
            self._starting = np.ones(self.batch, dtype=np.float32)
            return
        picked = np.asarray(rows, dtype=np.int64 if len(rows) == 0 else None)  # an empty list: nothing to reset
        if picked.dtype.kind not in "iu" or picked.ndim != 1 or ((picked < 0) | (picked >= self.batch)).any():
            raise ValueError(f"reset rows must be row indices in [0, {self.batch}), not {rows!r}")
        for s in self._states:
            s[picked] = 0.0
        self._starting[picked] = 1.0

    def act(self, obs: Any) -> Any:
        """Actions for one observation batch: a dict (or, for a single input, an array) of raw values."""
        out = self.run(self._feed(obs) + (self._states + [self._starting.copy()] if self.state else []))
        n_actions = len(self.meta["actions"])
        if self.validate:
            self._check_outputs(out)
        if self.state:
            self._states = [np.asarray(s) for s in out[n_actions : n_actions + len(self.state)]]
            self._starting[:] = 0.0
        actions = out[:n_actions]
        if len(actions) == 1:
            return actions[0]
        return {a["name"].removeprefix("action_"): v for a, v in zip(self.meta["actions"], actions)}

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One call of the exported graph on positional inputs (as named in ``policy.json``)."""
        return self._artifact(inputs)

    def _feed(self, obs: Any) -> list[np.ndarray]:
        """The observation inputs, in order, after the checks ``validate`` asks for."""
        names = [o["name"] for o in self.obs]
        if not isinstance(obs, dict):
            if len(names) != 1:
                raise ObservationError(f"this policy takes {len(names)} observations ({', '.join(names)}); pass a dict")
            obs = {names[0]: obs}
        if self.validate and set(obs) != set(names):
            extra, missing = sorted(set(obs) - set(names), key=str), sorted(set(names) - set(obs))
            problem = f"unexpected keys {extra}" if extra else ""
            problem += ("; " if extra and missing else "") + (f"missing keys {missing}" if missing else "")
            raise ObservationError(f"observations: {problem} (expected exactly {names})")
        if not self.validate:
            return [
                np.asarray(obs[o["name"]], dtype=_NUMPY_DTYPES[o["dtype"]]).reshape(self.batch, *o["shape"])
                for o in self.obs
            ]
        return [self._checked(o, obs[o["name"]]) for o in self.obs]

    def _checked(self, spec: dict, value: Any) -> np.ndarray:
        """One observation as the graph's dtype and (batch, *shape), or ObservationError saying why not."""
        name, want, shape = spec["name"], np.dtype(_NUMPY_DTYPES[spec["dtype"]]), tuple(spec["shape"])
        array = np.asarray(value)
        kinds = "fiu" if want.kind == "f" else ("iub" if spec.get("kind") == "multi_binary" else "iu")
        if array.dtype.kind not in kinds:
            kind = spec.get("kind", "box")
            raise ObservationError(f"observation '{name}': {array.dtype} values; it takes {want} ({kind})")
        if self.batch == 1 and array.shape == shape:
            array = array[None]
        if array.shape != (self.batch, *shape):
            alone = f" or {shape}" if self.batch == 1 else ""
            raise ObservationError(f"observation '{name}': shape {array.shape}; expected {(self.batch, *shape)}{alone}")
        _check_values(name, array, want)
        return array.astype(want, copy=False)

    def _check_outputs(self, out: list[np.ndarray]) -> None:
        for name, value in zip(self.outputs, out):
            value = np.asarray(value)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise BundleError(f"{self.bundle}: the policy's output '{name}' is not finite (NaN or inf)")


def _check_values(name: str, array: np.ndarray, want: np.dtype) -> None:
    """ObservationError unless every value becomes exactly itself as ``want`` (integers given for floats included)."""
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise ObservationError(f"observation '{name}': non-finite value {array[where]} at index {where}")
        if want.kind == "f" and np.abs(array).max(initial=0) > np.finfo(want).max:
            raise ObservationError(f"observation '{name}': values beyond {want}'s range (they would become inf)")
    elif array.dtype.kind in "iu" and array.size and want.kind in "iu":
        info = np.iinfo(want)
        if array.min() < info.min or array.max() > info.max:
            raise ObservationError(f"observation '{name}': values outside {want}'s range [{info.min}, {info.max}]")
    elif array.dtype.kind in "iu" and want.kind == "f":
        _check_exact_floats(name, array, want)


def _check_exact_floats(name: str, array: np.ndarray, want: np.dtype) -> None:
    """Integers for a float input (encoder ticks, say) are taken when ``want`` holds each one exactly."""
    exact = 2 ** (np.finfo(want).nmant + 1)  # every integer up to this is exactly a float of type ``want``
    for where in (tuple(int(i) for i in w) for w in np.argwhere(np.abs(array.astype(np.float64)) > exact)):
        if int(want.type(array[where])) != int(array[where]):
            raise ObservationError(
                f"observation '{name}': {array.dtype} value {int(array[where])} at index {where} is not exactly "
                f"a {want} (integers up to {exact} are); it takes {want}: pass {want} values"
            )
