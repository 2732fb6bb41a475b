"""PPO, top to bottom: collect a rollout on the training device, compute GAE, update in minibatches.

Everything per environment step stays on the device: rollout storage, episode statistics, the
return normaliser. With a tensor environment a rollout makes no host synchronisation; numbers
are read back once per update (the loss and the finiteness flags, together).

``PPO`` at the end ties the steps together as the runner's ``Algorithm``: it owns the optimiser,
the rollout storage, the return normaliser and the carry-over between rollouts.

Data-parallel (torchrun): each rank collects its own rollout; the communicator reduces at PPO's
synchronisation points only: the gradients after each minibatch's backward (one flattened
all-reduce), the minibatch's advantage statistics and weight, the KL read per epoch, the
observation and return normalisers after each update (a parallel count/mean/M2 merge, so every
rank holds the same statistics) and the episode statistics for the log. With one process the
communicator is ``NoComm`` and none of this runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from sfspec.compiler.model import ActorCritic, RunningMeanStd
from sfspec.runtime.config import TrainConfig
from sfspec.runtime.distributed import NoComm, fold_moments, merge_moments, moments_row
from sfspec.runtime.errors import TrainingError
from sfspec.runtime.optim import LeanAdam
from sfspec.runtime.vec_env import ObsDict, Step

NO_COMM = NoComm()


@dataclass
class Carry:
    """What one rollout hands to the next: current observations, memory and running episode sums."""

    obs: ObsDict
    state: torch.Tensor  # recurrent state (N, S)
    done: torch.Tensor  # (N,) float: the last step ended an episode
    episode_return: torch.Tensor  # (N,) undiscounted, raw rewards
    episode_length: torch.Tensor  # (N,)
    discounted_return: torch.Tensor  # (N,) for the return normaliser
    finished_return: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # sums since last log
    finished_length: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    finished_count: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    @classmethod
    def start(cls, obs: ObsDict, model: ActorCritic, num_envs: int, device: torch.device) -> Carry:
        """Fresh carry: every environment starts an episode."""
        zeros = torch.zeros(num_envs, device=device)
        scalar = torch.zeros((), device=device)
        return cls(
            obs,
            model.initial_state(num_envs, device),
            torch.ones(num_envs, device=device),
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
            scalar.clone(),
            scalar.clone(),
            scalar.clone(),
        )

    def take_episode_stats(self) -> tuple[float | None, float | None, int]:
        """Mean return and length of the episodes finished since the last call (one host read)."""
        count, ret, length = torch.stack([self.finished_count, self.finished_return, self.finished_length]).tolist()
        for t in (self.finished_count, self.finished_return, self.finished_length):
            t.zero_()
        if count == 0:
            return None, None, 0
        return ret / count, length / count, int(count)


@dataclass
class Rollout:
    """Storage for T steps of N environments, on the training device."""

    obs: ObsDict  # (T, N, ...)
    actions: torch.Tensor  # (T, N, A)
    log_probs: torch.Tensor  # (T, N)
    values: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N), normalised and with truncation bootstrap added
    ends: torch.Tensor  # (T, N) float: the episode ended at this step
    starts: torch.Tensor  # (T, N) float: the episode started at this step
    states: torch.Tensor  # (T, N, S): recurrent state before each step (before the start reset)
    # Tensor envs only: truncation bootstraps are computed once per rollout, in one batch.
    final_obs: ObsDict | None = None  # (T, N, ...) observation reached by each step, before reset
    next_states: torch.Tensor | None = None  # (T, N, S) state after each step
    truncated: torch.Tensor | None = None  # (T, N) float
    # Next-step autoreset envs only: 0 where the step was the env's reset (excluded from the losses).
    valid: torch.Tensor | None = None

    @classmethod
    def allocate(
        cls,
        steps: int,
        obs: ObsDict,
        action_size: int,
        state_size: int,
        device,
        batched_bootstrap: bool = False,
        masked: bool = False,
    ) -> Rollout:
        """Preallocate storage shaped after one batch of observations."""
        n = next(iter(obs.values())).shape[0]
        extra = {}
        if batched_bootstrap:
            extra = {
                "final_obs": {k: torch.zeros((steps, *v.shape), dtype=v.dtype, device=device) for k, v in obs.items()},
                "next_states": torch.zeros(steps, n, state_size, device=device),
                "truncated": torch.zeros(steps, n, device=device),
            }
        if masked:
            extra["valid"] = torch.ones(steps, n, device=device)
        return cls(
            obs={k: torch.zeros((steps, *v.shape), dtype=v.dtype, device=device) for k, v in obs.items()},
            actions=torch.zeros(steps, n, action_size, device=device),
            log_probs=torch.zeros(steps, n, device=device),
            values=torch.zeros(steps, n, device=device),
            rewards=torch.zeros(steps, n, device=device),
            ends=torch.zeros(steps, n, device=device),
            starts=torch.zeros(steps, n, device=device),
            states=torch.zeros(steps, n, state_size, device=device),
            **extra,
        )


class ReturnNormalizer(nn.Module):
    """Scales rewards by the running standard deviation of the discounted return.

    Data-parallel, each rank also keeps the moments of what it saw since the last merge
    (``pending``); ``merge`` folds every rank's into the statistics they all held before.
    """

    def __init__(self, distributed: bool = False):
        super().__init__()
        self.rms = RunningMeanStd(())
        self.distributed = distributed
        # Not a submodule: the state_dict (and so the checkpoint) is the same with one rank or several.
        self.pending: list[RunningMeanStd] = []
        self.synced: torch.Tensor | None = None  # (count, mean, var) when the rollout began

    def forward(self, reward: torch.Tensor, carry: Carry, gamma: float, done: torch.Tensor) -> torch.Tensor:
        carry.discounted_return.mul_(gamma).add_(reward)
        self.rms.update(carry.discounted_return)
        for pending in self.pending:
            pending.update(carry.discounted_return)
        carry.discounted_return.mul_(1.0 - done)
        return reward / torch.sqrt(self.rms.var + 1e-8).to(reward.dtype)

    def begin(self) -> None:
        """Remember the statistics every rank shares before a rollout (distributed only)."""
        self.synced = moments_row(self.rms)
        self.pending = [RunningMeanStd(()).to(self.rms.mean.device)]
        _reset_moments(self.pending[0])

    def merge(self, comm: NoComm) -> None:
        """Every rank's moments since ``begin``, merged in rank order into the shared statistics."""
        count, mean, var = merge_moments(comm.all_gather_rows(moments_row(self.pending[0])), 1)
        with torch.no_grad():
            self.rms.count.copy_(self.synced[0])
            self.rms.mean.copy_(self.synced[1].reshape(()))
            self.rms.var.copy_(self.synced[2].reshape(()))
        fold_moments(self.rms, count, mean, var)


def _reset_moments(rms: RunningMeanStd) -> None:
    """An empty running mean/std (folding a batch into it gives that batch's moments)."""
    with torch.no_grad():
        rms.mean.zero_()
        rms.var.fill_(1.0)
        rms.count.zero_()


@torch.no_grad()
def merge_observation_normalizers(model: ActorCritic, obs: ObsDict, comm: NoComm) -> None:
    """Fold every rank's observations into every rank's normalisers: the same statistics everywhere.

    Each normaliser is emptied, fed this rank's batch through the preprocessor's own update (so it
    holds exactly that batch's moments), and then set to the shared statistics folded with all
    ranks' batches, merged in rank order (one all-reduce for all normalisers).
    """
    norms = list(model.preprocessor.normalizers)
    if not norms:
        return
    shared = [moments_row(rms) for rms in norms]
    for rms in norms:
        _reset_moments(rms)
    model.preprocessor.update(obs)
    rows = comm.all_gather_rows(torch.cat([moments_row(rms) for rms in norms]))
    start = 0
    for rms, before in zip(norms, shared):
        width = rms.mean.numel()
        count, mean, var = merge_moments(rows[:, start : start + 1 + 2 * width], width)
        start += 1 + 2 * width
        rms.count.copy_(before[0])
        rms.mean.copy_(before[1 : 1 + width].reshape(rms.mean.shape))
        rms.var.copy_(before[1 + width :].reshape(rms.var.shape))
        fold_moments(rms, count, mean, var)


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """bfloat16 autocast for the network when ``train.amp`` is on (distribution math stays float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)


@torch.no_grad()
def collect_rollout(
    model: ActorCritic, env, carry: Carry, rollout: Rollout, cfg: TrainConfig, return_norm: ReturnNormalizer | None
) -> None:
    """Fill ``rollout`` with T steps from ``env``, advancing ``carry``."""
    for t in range(rollout.actions.shape[0]):
        rollout.starts[t] = carry.done
        rollout.states[t] = carry.state
        state = carry.state * (1.0 - carry.done).unsqueeze(-1)
        with autocast(cfg, state.device):
            out = model.act(carry.obs, state)
        for key, value in carry.obs.items():
            rollout.obs[key][t] = value
        rollout.actions[t] = out.actions
        rollout.log_probs[t] = out.log_probs
        rollout.values[t] = out.values

        step: Step = env.step(model.to_env(out.actions), model.layout)
        ended = (step.terminated | step.truncated).to(torch.float32)
        reward = step.reward
        carry.episode_return.add_(reward)
        carry.episode_length.add_(1.0)
        carry.finished_return.add_((carry.episode_return * ended).sum())
        carry.finished_length.add_((carry.episode_length * ended).sum())
        carry.finished_count.add_(ended.sum())
        done = ended
        if step.valid is not None:  # an env's reset step: no transition; the next step starts afresh
            rollout.valid[t] = step.valid.to(torch.float32)
            done = torch.maximum(ended, 1.0 - rollout.valid[t])
        carry.episode_return.mul_(1.0 - done)
        carry.episode_length.mul_(1.0 - done)
        if return_norm is not None:
            reward = return_norm(reward, carry, cfg.gamma, done)
        # Truncation is not failure: bootstrap from the value of the true final observation.
        if rollout.final_obs is not None:  # device env: store now, evaluate all at once below
            for key, value in step.final_obs.items():
                rollout.final_obs[key][t] = value
            rollout.next_states[t] = out.state
            rollout.truncated[t] = step.truncated
        elif step.final_obs is not None and bool(step.truncated.any()):  # host env: rare, so per step
            final_value = model.values(step.final_obs, out.state)
            reward = reward + cfg.gamma * final_value * step.truncated.to(torch.float32)
        rollout.rewards[t] = reward
        rollout.ends[t] = done
        carry.obs, carry.state, carry.done = step.obs, out.state, done
    if rollout.final_obs is not None:
        steps, n = rollout.truncated.shape
        flat_obs = {k: v.flatten(0, 1) for k, v in rollout.final_obs.items()}
        final_value = model.values(flat_obs, rollout.next_states.flatten(0, 1)).reshape(steps, n)
        rollout.rewards.add_(cfg.gamma * final_value * rollout.truncated)


@torch.no_grad()
def compute_gae(
    rollout: Rollout, next_value: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (T, N); GAE stops where an episode ended."""
    steps = rollout.rewards.shape[0]
    advantages = torch.zeros_like(rollout.rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else rollout.values[t + 1]
        alive = 1.0 - rollout.ends[t]
        delta = rollout.rewards[t] + gamma * following * alive - rollout.values[t]
        last = delta + gamma * lam * alive * last
        advantages[t] = last
    return advantages, advantages + rollout.values


@dataclass
class Batch:
    """Sequences (L, B) for one minibatch; L = 1 for feed-forward models."""

    obs: ObsDict
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    starts: torch.Tensor
    state: torch.Tensor  # (B, S) state before the first step
    valid: torch.Tensor | None = None  # (L, B) weights: 0 for steps that were an env's reset


def make_sequences(rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor, length: int) -> Batch:
    """Cut (T, N) into (length, T/length * N) sequences, each with its starting state."""
    steps, n = rollout.rewards.shape
    chunks = steps // length

    def cut(x: torch.Tensor) -> torch.Tensor:  # (T, N, ...) -> (L, C*N, ...)
        x = x.reshape(chunks, length, n, *x.shape[2:]).transpose(0, 1)
        return x.reshape(length, chunks * n, *x.shape[3:])

    return Batch(
        obs={k: cut(v) for k, v in rollout.obs.items()},
        actions=cut(rollout.actions),
        log_probs=cut(rollout.log_probs),
        values=cut(rollout.values),
        advantages=cut(advantages),
        returns=cut(returns),
        starts=cut(rollout.starts),
        state=rollout.states[::length].reshape(chunks * n, -1),
        valid=cut(rollout.valid) if rollout.valid is not None else None,
    )


def select(batch: Batch, index: torch.Tensor) -> Batch:
    """The sequences at ``index`` (along the batch axis); index_select: a third of advanced indexing's time on CPU."""
    return Batch(
        obs={k: v.index_select(1, index) for k, v in batch.obs.items()},
        actions=batch.actions.index_select(1, index),
        log_probs=batch.log_probs.index_select(1, index),
        values=batch.values.index_select(1, index),
        advantages=batch.advantages.index_select(1, index),
        returns=batch.returns.index_select(1, index),
        starts=batch.starts.index_select(1, index),
        state=batch.state.index_select(0, index),
        valid=batch.valid.index_select(1, index) if batch.valid is not None else None,
    )


def ppo_loss(
    model: ActorCritic, mb: Batch, cfg: TrainConfig, moments: tuple[torch.Tensor, ...] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate + value loss - entropy bonus, and the statistics to log.

    ``moments`` (data-parallel): the minibatch's weight per rank and advantage mean and std over
    all ranks (``global_moments``), so each rank's loss is its share of the whole minibatch's.
    """
    with autocast(cfg, mb.state.device):
        log_probs, entropy, values = model.evaluate(mb.obs, mb.state, mb.starts, mb.actions)
    log_probs, entropy, values = log_probs.float(), entropy.float(), values.float()
    log_ratio = log_probs - mb.log_probs
    ratio = log_ratio.exp()
    mean = _mean_over(mb.valid, None if moments is None else moments[0])
    advantages = mb.advantages
    if cfg.normalize_advantages and moments is not None:
        advantages = (advantages - moments[1]) / (moments[2] + 1e-8)
    elif cfg.normalize_advantages:
        centred = advantages - mean(advantages)
        advantages = centred / (mean(centred**2).sqrt() + 1e-8)
    policy_loss = mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)))
    if cfg.value_clip is not None:
        clipped = mb.values + (values - mb.values).clamp(-cfg.value_clip, cfg.value_clip)
        value_loss = 0.5 * mean(torch.max((values - mb.returns) ** 2, (clipped - mb.returns) ** 2))
    else:
        value_loss = 0.5 * mean((values - mb.returns) ** 2)
    entropy_mean = mean(entropy)
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy_mean
    with torch.no_grad():
        stats = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy_mean.detach(),
            "approx_kl": mean((ratio - 1) - log_ratio),
            "clip_fraction": mean(((ratio - 1.0).abs() > cfg.clip).float()),
            "loss": loss.detach(),
        }
    return loss, stats


def _mean_over(weights: torch.Tensor | None, total: torch.Tensor | None = None):
    """A mean over all elements, or over the weighted ones (steps that were an env's reset weigh 0).

    ``total`` (data-parallel): the minibatch's weight averaged over ranks, so that the mean of the
    ranks' results is the mean over the whole minibatch even when ranks hold different weights.
    """
    if total is not None:
        return (lambda x: x.sum() / total) if weights is None else (lambda x: (x * weights).sum() / total)
    if weights is None:
        return torch.mean
    total = weights.sum().clamp(min=1.0)
    return lambda x: (x * weights).sum() / total


def global_moments(mb: Batch, comm: NoComm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The minibatch's weight per rank and its advantages' mean and std over every rank (one all-reduce)."""
    adv = mb.advantages.double()
    weights = mb.valid.double() if mb.valid is not None else torch.ones_like(adv)
    sums = comm.all_reduce_sum_(torch.stack([weights.sum(), (weights * adv).sum(), (weights * adv * adv).sum()]))
    count = sums[0].clamp(min=1.0)
    mean = sums[1] / count
    std = (sums[2] / count - mean * mean).clamp(min=0.0).sqrt()
    return (count / comm.world_size).float(), mean.float(), std.float()


def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    next_value: torch.Tensor,
    cfg: TrainConfig,
    comm: NoComm = NO_COMM,
) -> dict[str, torch.Tensor]:
    """Several epochs of minibatch updates on one rollout; returns mean statistics (device tensors).

    Data-parallel, every rank takes the same number of minibatches of the same size from its own
    rollout; their gradients, advantage statistics and KL are reduced over ranks (``comm``).
    """
    advantages, returns = compute_gae(rollout, next_value, cfg.gamma, cfg.gae_lambda)
    steps = rollout.rewards.shape[0]
    length = (cfg.bptt or steps) if model.state_size else 1
    batch = make_sequences(rollout, advantages, returns, length)
    count = batch.actions.shape[1]
    mb_size = max(1, count // cfg.minibatches)
    totals: dict[str, torch.Tensor] = {}
    updates = 0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip_groups = gradient_clip_groups(model)
    for _ in range(cfg.epochs):
        epoch_kl = torch.zeros((), device=next_value.device)
        order = torch.randperm(count, device=next_value.device)  # drawn even if unused: the same random stream
        for start in range(0, count - mb_size + 1, mb_size):
            # One minibatch holding the whole batch needs no gather: the loss is a mean over all of it.
            mb = batch if mb_size == count else select(batch, order[start : start + mb_size])
            loss, stats = ppo_loss(model, mb, cfg, global_moments(mb, comm) if comm.active else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if comm.active:
                comm.average_gradients(params)
            if cfg.max_grad_norm is not None:
                clip_grad_norms_(clip_groups, cfg.max_grad_norm)
            optimizer.step()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            epoch_kl = epoch_kl + stats["approx_kl"]
            updates += 1
        if cfg.lr_schedule == "kl_adaptive" or cfg.target_kl is not None:
            if comm.active:  # every rank adapts its learning rate and stops alike
                epoch_kl = comm.all_reduce_sum_(epoch_kl.reshape(1)) / comm.world_size
            kl = epoch_kl.item() / max(1, count // mb_size)  # one host read per epoch, only when asked for
            if cfg.lr_schedule == "kl_adaptive":
                _adapt_lr(optimizer, kl, cfg.desired_kl)
            if cfg.target_kl is not None and kl > cfg.target_kl:
                break
    out = {k: v / updates for k, v in totals.items()}
    residual = (returns - rollout.values).var()
    out["explained_variance"] = 1.0 - residual / (returns.var() + 1e-8)
    return out


def gradient_clip_groups(model: ActorCritic) -> list[list[nn.Parameter]]:
    """The parameter groups whose gradient norms ``max_grad_norm`` bounds, each on its own.

    With a separate critic, the actor's parameters and the critic's are clipped apart (as rsl_rl
    does): the value loss's gradient, often hundreds of times the policy's, would otherwise set the
    common scale and shrink the policy's step to almost nothing. The model contract says which
    parameters are the critic's (``critic_parameters``); shared weights (or a model that does not
    say): one group.
    """
    critic = {id(p) for p in model.critic_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    actor = [p for p in trainable if id(p) not in critic]
    critic_side = [p for p in trainable if id(p) in critic]
    return [group for group in (actor, critic_side) if group]


def clip_grad_norms_(groups: list[list[nn.Parameter]], max_norm: float) -> None:
    """Scale each group's gradients to a norm of at most ``max_norm`` (as ``clip_grad_norm_``, per group).

    One fused norm over every gradient, then one multiply per group: as cheap as a single joint clip.
    """
    grads = [[p.grad for p in group if p.grad is not None] for group in groups]
    flat = [g for group in grads for g in group]
    if not flat:
        return
    norms = torch.stack(torch._foreach_norm(flat))
    start = 0
    for group in grads:
        if group:
            total = norms[start : start + len(group)].norm()
            torch._foreach_mul_(group, (max_norm / (total + 1e-6)).clamp(max=1.0))
        start += len(group)


def _adapt_lr(optimizer: torch.optim.Optimizer, kl: float, desired: float) -> None:
    """KL-adaptive learning rate (as in rsl_rl and rl_games)."""
    for group in optimizer.param_groups:
        if kl > 2.0 * desired:
            group["lr"] = max(group["lr"] / 1.5, 1e-6)
        elif 0.0 < kl < desired / 2.0:
            group["lr"] = min(group["lr"] * 1.5, 1e-2)


def scheduled_lr(cfg: TrainConfig, update: int, total_updates: int) -> float | None:
    """The learning rate for this update under a fixed schedule (None: leave it as it is)."""
    if cfg.lr_schedule == "linear":
        return cfg.lr * max(0.0, 1.0 - update / total_updates)
    return None


def num_updates(cfg: TrainConfig, num_envs: int) -> int:
    """Updates needed to reach ``cfg.steps`` environment steps."""
    return math.ceil(cfg.steps / (cfg.rollout * num_envs))


def finite_flags(rollout: Rollout) -> torch.Tensor:
    """One flag per float observation key, then the rewards: 1 where the rollout holds a non-finite value."""
    parts = [rollout.obs[k] for k in sorted(rollout.obs) if rollout.obs[k].is_floating_point()] + [rollout.rewards]
    return torch.stack([(~torch.isfinite(p)).any() for p in parts]).to(torch.float32)


_KEPT = "training stopped, the last checkpoint is kept"


def check_finite(loss: torch.Tensor, flags: torch.Tensor, rollout: Rollout, env_id: str, update: int, steps: int):
    """Stop on non-finite data, naming its source: the environment's observations or rewards, else the loss."""
    values = torch.cat([loss.detach().float().reshape(1), flags.to(loss.device)]).tolist()
    check_finite_data(values[1:], rollout, env_id, update, steps)
    check_finite_loss(values[0], env_id, update, steps)


def check_finite_data(flags: list[float], rollout: Rollout, env_id: str, update: int, steps: int, rank: str = ""):
    """Raise naming the first observation key (or the rewards) whose flag is set (``finite_flags``, read back)."""
    keys = [k for k in sorted(rollout.obs) if rollout.obs[k].is_floating_point()]
    where = f"steps {update * steps}-{(update + 1) * steps}"
    for key, bad in zip(keys, flags):
        if bad:
            raise TrainingError(f"{rank}{env_id} returned a non-finite observation '{key}' (in {where}); {_KEPT}")
    if flags[-1]:
        raise TrainingError(f"{rank}{env_id} returned a non-finite reward (in {where}); {_KEPT}")


def check_finite_loss(loss: float, env_id: str, update: int, steps: int, rank: str = "") -> None:
    """Raise when the loss (from finite data) is not finite."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"{rank}the loss became {loss} at step {(update + 1) * steps} "
            f"of {env_id}; try a lower train.lr or train.max_grad_norm"
        )


def reduce_and_check(
    stats: dict[str, torch.Tensor], flags: torch.Tensor, rollout: Rollout, env_id: str, update: int, steps: int, comm
) -> dict[str, torch.Tensor]:
    """Data-parallel: every rank's statistics and finiteness flags in one all-reduce; every rank stops alike.

    A rank with non-finite data is named (the same error on every rank, so none waits for another);
    the logged statistics are the mean over ranks.
    """
    keys = list(stats)
    row = torch.cat([torch.stack([stats[k].detach().float() for k in keys]), flags.to(stats["loss"].device)])
    table = comm.all_gather_rows(row)
    values = table.tolist()
    for rank, rank_values in enumerate(values):  # bad data first, wherever it is; then a bad loss
        check_finite_data(rank_values[len(keys) :], rollout, env_id, update, steps, f"rank {rank}: ")
    for rank, rank_values in enumerate(values):
        check_finite_loss(rank_values[keys.index("loss")], env_id, update, steps, f"rank {rank}: ")
    means = table[:, : len(keys)].mean(0)
    return {k: means[i] for i, k in enumerate(keys)}


def make_optimizer(model: ActorCritic, lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel (one call for all parameters, CPU and CUDA alike)."""
    return LeanAdam(model.parameters(), lr=lr, eps=1e-5, fused=True)  # torch.optim.Adam, without torch._dynamo


_CARRIED = ("state", "done", "episode_return", "episode_length", "discounted_return")


class PPO:
    """PPO for one batched environment: ``iteration`` collects a rollout and updates the model once.

    With a communicator of several ranks (``comm``), each rank runs this on its own environments
    and the ranks' updates are one update of the whole batch: ``train.steps`` counts all ranks' steps.
    """

    local_keys = ("carry",)  # state_dict() keys that differ between ranks (the rest is the same everywhere)

    def __init__(self, model: ActorCritic, env, train: dict, device: torch.device, comm: NoComm = NO_COMM):
        cfg = TrainConfig.from_spec({"train": train})
        if cfg.bptt is not None and model.state_size and cfg.rollout % cfg.bptt:
            raise TrainingError(f"train.bptt ({cfg.bptt}) must divide train.rollout ({cfg.rollout})")
        self.model, self.cfg, self.device, self.env_id = model, cfg, device, env.env_id
        self.num_envs, self.on_device, self.comm = env.num_envs, env.on_device, comm
        self.masked = getattr(env, "next_step_reset", False)
        self.optimizer = make_optimizer(model, cfg.lr)
        self.return_norm = ReturnNormalizer(comm.active).to(device) if cfg.normalize_returns else None
        self.steps_per_iteration = cfg.rollout * env.num_envs * comm.world_size
        self.total_iterations = num_updates(cfg, env.num_envs * comm.world_size)
        self.carry: Carry | None = None
        self.rollout: Rollout | None = None

    def start(self, obs: ObsDict) -> None:
        """Fresh carry-over and rollout storage shaped after the first observations."""
        self.carry = Carry.start(obs, self.model, self.num_envs, self.device)
        self.rollout = Rollout.allocate(
            self.cfg.rollout,
            obs,
            self.model.layout.size,
            self.model.state_size,
            self.device,
            batched_bootstrap=self.on_device,
            masked=self.masked,
        )

    def iteration(self, env, index: int) -> dict[str, torch.Tensor]:
        """One rollout and one update (several epochs of minibatches); statistics as device tensors."""
        cfg, model, carry, rollout = self.cfg, self.model, self.carry, self.rollout
        lr = scheduled_lr(cfg, index, self.total_iterations)
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        comm = self.comm
        if comm.active and self.return_norm is not None:
            self.return_norm.begin()
        collect_rollout(model, env, carry, rollout, cfg, self.return_norm)
        finite = finite_flags(rollout)  # read back with the loss: no extra host synchronisation
        with torch.no_grad():
            next_value = model.values(carry.obs, carry.state * (1.0 - carry.done).unsqueeze(-1))
        stats = ppo_update(model, self.optimizer, rollout, next_value, cfg, comm)
        obs = {k: v.flatten(0, 1) for k, v in rollout.obs.items()}
        if not comm.active:
            check_finite(stats["loss"], finite, rollout, self.env_id, index, self.steps_per_iteration)
            model.preprocessor.update(obs)
            return stats
        stats = reduce_and_check(stats, finite, rollout, self.env_id, index, self.steps_per_iteration, comm)
        merge_observation_normalizers(model, obs, comm)
        if self.return_norm is not None:
            self.return_norm.merge(comm)
        return stats

    def episode_stats(self) -> tuple[float | None, float | None, int]:
        """Mean return and length of the episodes finished since the last call (on every rank: all ranks' episodes)."""
        carry = self.carry
        if self.comm.active:
            finished = torch.stack([carry.finished_return, carry.finished_length, carry.finished_count])
            carry.finished_return, carry.finished_length, carry.finished_count = self.comm.all_reduce_sum_(finished)
        return carry.take_episode_stats()

    def learning_rate(self) -> float:
        """The optimiser's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        """Optimiser, return normaliser and the carry-over (episode statistics since the last log included)."""
        carry = self.carry
        return {
            "optimizer": self.optimizer.state_dict(),
            "return_norm": self.return_norm.state_dict() if self.return_norm is not None else None,
            "carry": {
                "obs": carry.obs,
                **{key: getattr(carry, key) for key in _CARRIED},
                "finished": torch.stack([carry.finished_return, carry.finished_length, carry.finished_count]),
            },
        }

    def load_state_dict(self, state: dict, exact: bool) -> None:
        """Restore a checkpoint; with ``exact`` (a restored tensor env) the rollout continues where it stopped."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.return_norm is not None and state.get("return_norm") is not None:
            self.return_norm.load_state_dict(state["return_norm"])
        saved, carry = state.get("carry", {}), self.carry  # no carry: this rank starts fresh (another world size)
        if exact:
            carry.obs = {k: v.to(self.device) for k, v in saved["obs"].items()}
            for key in _CARRIED:
                setattr(carry, key, saved[key].to(self.device))
        if "finished" in saved:
            finished = saved["finished"].to(self.device).unbind()
            carry.finished_return, carry.finished_length, carry.finished_count = finished
