"""PPO's update on a real rollout: what one part of the loss may and may not do to the other side's step."""

import copy

import torch

from sfspec.compiler.build import compile_model
from sfspec.compiler.interface_config import InterfaceConfig
from sfspec.runtime.config import TrainConfig
from sfspec.runtime.ppo import Carry, Rollout, collect_rollout, make_optimizer, ppo_update
from sfspec.runtime.vec_env import make_env

CPU = torch.device("cpu")


def _spec(share_weights: bool, value_coef: float) -> dict:
    return {
        "env": {"id": "sfspec/Pendulum-v1", "num_envs": 8},
        "model": {"share_weights": share_weights, "encoder": [{"mlp": {"sizes": [16, 16], "activation": "tanh"}}]},
        "train": {
            "rollout": 16,
            "epochs": 2,
            "minibatches": 2,
            "lr": 1e-3,
            "lr_schedule": "constant",
            "value_coef": value_coef,
            "max_grad_norm": 0.5,
            "seed": 0,
        },
    }


def _actor_after_update(share_weights: bool, value_coef: float) -> dict[str, torch.Tensor]:
    """The actor's parameters after one PPO update on a fixed Pendulum rollout (raw returns, in the hundreds)."""
    torch.manual_seed(0)
    spec = _spec(share_weights, value_coef)
    env = make_env(spec["env"], 0, CPU, InterfaceConfig.from_spec(spec))
    model = compile_model(spec, env.observation_space, env.action_space)
    cfg = TrainConfig.from_spec(spec)
    carry = Carry.start(env.reset(seed=0), model, env.num_envs, CPU)
    rollout = Rollout.allocate(16, carry.obs, model.layout.size, model.state_size, CPU, batched_bootstrap=True)
    collect_rollout(model, env, carry, rollout, cfg, None)
    next_value = model.values(carry.obs, carry.state).detach()
    model = copy.deepcopy(model)
    torch.manual_seed(1)  # the same minibatch order for every call
    ppo_update(model, make_optimizer(model, cfg.lr), rollout, next_value, cfg)
    return {k: v.detach().clone() for k, v in model.named_parameters() if not k.startswith("critic_")}


def test_a_large_value_loss_does_not_shrink_the_policy_step_of_a_separate_actor():
    """With separate actor and critic stacks, gradient clipping bounds each side's norm on its own.

    Clipping their joint norm let the value loss's gradient (hundreds of times the policy's on raw
    Pendulum returns) set the scale, and the policy's step shrank to almost nothing: sfspec learned
    Pendulum slower than rsl_rl, which clips the two apart.
    """
    without_value_loss = _actor_after_update(share_weights=False, value_coef=0.0)
    with_large_value_loss = _actor_after_update(share_weights=False, value_coef=100.0)
    for name, value in without_value_loss.items():
        torch.testing.assert_close(with_large_value_loss[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_a_shared_trunk_still_clips_one_joint_gradient_norm():
    """Shared weights: the trunk serves both losses, so the value loss still shapes the actor's step (one norm)."""
    without_value_loss = _actor_after_update(share_weights=True, value_coef=0.0)
    with_large_value_loss = _actor_after_update(share_weights=True, value_coef=100.0)
    head = "action_parameterization.linear.weight"
    assert not torch.allclose(with_large_value_loss[head], without_value_loss[head])


def test_each_sides_gradient_is_clipped_as_torch_clips_it_alone():
    """The per-side clip scales each group exactly as ``clip_grad_norm_`` on that group would."""
    from sfspec.runtime.ppo import clip_grad_norms_

    torch.manual_seed(0)
    groups = [[torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(3))] for _ in range(2)]
    scales = (100.0, 0.01)  # one group over the bound, one under it
    for group, scale in zip(groups, scales):
        for p in group:
            p.grad = torch.randn_like(p) * scale
    copies = [[torch.nn.Parameter(p.detach().clone()) for p in group] for group in groups]
    for group, copy_group in zip(groups, copies):
        for p, c in zip(group, copy_group):
            c.grad = p.grad.clone()
        torch.nn.utils.clip_grad_norm_(copy_group, 0.5)
    clip_grad_norms_(groups, 0.5)
    for group, copy_group in zip(groups, copies):
        for p, c in zip(group, copy_group):
            torch.testing.assert_close(p.grad, c.grad)
    assert torch.stack([p.grad.norm() for p in groups[0]]).norm() < 0.5 + 1e-5
