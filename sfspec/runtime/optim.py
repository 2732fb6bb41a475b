"""Adam as torch.optim.Adam(fused=True) computes it, without torch.optim's compile hooks.

torch.optim wraps ``step``, ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict``
in hooks for torch.compile that import ``torch._dynamo`` (with sympy and inductor: about a second at
start-up, several on a busy machine) even when nothing is compiled. ``LeanAdam`` is ``torch.optim.Adam``
(same state, same ``state_dict``: checkpoints are unchanged) whose methods call the undecorated
functions, and whose step calls the same fused kernel.
"""

from __future__ import annotations

import torch
from torch.optim import Adam, Optimizer
from torch.optim.adam import adam


def _plain(method):
    """The function under torch's ``_disable_dynamo`` / ``_use_grad_for_differentiable`` wrapper."""
    return getattr(method, "__wrapped__", method)


class LeanAdam(Adam):
    """``torch.optim.Adam(fused=True)`` without importing torch._dynamo (unless the model is compiled)."""

    def add_param_group(self, param_group: dict) -> None:
        _plain(Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _plain(Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict:
        return _plain(Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict) -> None:
        _plain(Optimizer.load_state_dict)(self, state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        """One fused Adam step over every parameter with a gradient (no closure, no amsgrad)."""
        if closure is not None:
            raise ValueError("LeanAdam.step takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state_for(p) for p in params]
            beta1, beta2 = group["betas"]
            adam(  # torch's functional Adam: imports torch._dynamo only when called inside torch.compile
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                fused=True,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )
        return None

    def _state_for(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:  # as Adam's _init_group makes it for fused=True
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
