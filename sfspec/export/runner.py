"""Run a policy bundle in a robot node: load it, ``reset()`` at mission start, ``act(obs)`` each tick.

The runner holds the recurrent state itself, so a controller never needs to know its layout.
Backends: onnxruntime (``"onnx"``) or TorchScript (``"torchscript"``); neither needs sfspec's
compiler or the spec's environment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_NUMPY_DTYPES = {"float32": np.float32, "int64": np.int64, "int8": np.int8, "uint8": np.uint8}


class PolicyRunner:
    """A loaded bundle with its own memory; ``act`` maps raw observations to env actions."""

    def __init__(self, bundle: str | Path, backend: str = "onnx", batch: int = 1, threads: int = 1):
        self.bundle = Path(bundle)
        self.meta = json.loads((self.bundle / "policy.json").read_text())
        self.backend = backend
        self.batch = batch
        self.inputs = self.meta["inputs"]
        self.outputs = self.meta["outputs"]
        self.obs = self.meta["observations"]
        self.state = self.meta["state"]
        path = self.bundle / self.meta["files"][backend]
        if backend == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        elif backend == "torchscript":
            import torch

            torch.set_num_threads(threads)
            self._module = torch.jit.load(str(path))
        else:
            raise ValueError(f"backend must be 'onnx' or 'torchscript', not {backend!r}")
        self.reset()

    def reset(self, rows: list[int] | None = None) -> None:
        """Zero the memory of every row (mission start), or of the given rows only."""
        if rows is None:
            self._states = [np.zeros([self.batch, *s["shape"][1:]], dtype=np.float32) for s in self.state]
        else:
            for s in self._states:
                s[rows] = 0.0

    def act(self, obs: Any) -> Any:
        """Actions for one observation batch: a dict (or, for a single input, an array) of raw values."""
        if not isinstance(obs, dict):
            obs = {self.obs[0]["name"]: obs}
        feed = [
            np.asarray(obs[o["name"]], dtype=_NUMPY_DTYPES[o["dtype"]]).reshape(self.batch, *o["shape"])
            for o in self.obs
        ]
        if self.state:
            feed += self._states + [np.zeros(self.batch, dtype=np.float32)]
        out = self.run(feed)
        n_actions = len(self.meta["actions"])
        if self.state:
            self._states = [np.asarray(s) for s in out[n_actions : n_actions + len(self.state)]]
        actions = out[:n_actions]
        if len(actions) == 1:
            return actions[0]
        return {a["name"].removeprefix("action_"): v for a, v in zip(self.meta["actions"], actions)}

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One call of the exported graph on positional inputs (as named in ``policy.json``)."""
        if self.backend == "onnx":
            return self._session.run(None, dict(zip(self.inputs, inputs)))
        import torch

        with torch.no_grad():
            out = self._module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        return [o.numpy() for o in out]
