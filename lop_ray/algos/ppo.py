"""Clipped PPO with GAE, as the paper's code runs it (spec/algorithms.md, PPO).

S seeds learn at once, each from its own batch (the networks' seed axis). One iteration learns from
a batch of consecutive env steps: GAE(γ, λ) advantages with a time-limit
truncation treated as termination (no bootstrap), value targets = advantages + old values, advantages
normalised once over the whole batch; then `epochs` passes over the batch in shuffled minibatches,
each one Adam step on clipped policy loss + value MSE, followed by the interventions of each network
(continual backprop or ReDo: policy net, then value net, on that minibatch's activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lop_ray.algos.backprop import Intervention
from lop_ray.nets.policy import GaussianPolicy, ValueNetwork
from lop_ray.nets.seed_elementwise import per_seed_elementwise


@dataclass(frozen=True)
class PPOConfig:
    """PPO's settings; defaults are the paper's (all its configs share them)."""

    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    epochs: int = 10
    minibatch_size: int = 128  # the original's 16 slices of a 2048-step batch
    value_coef: float = 1.0
    entropy_coef: float = 0.0
    max_grad_norm: float | None = None  # the original clips at 1e9, i.e. never


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_values: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """Generalised advantage estimates of a (time, env) batch.

    `values[t]` = V(obs[t]); `last_values` = V of the observation after the batch's last step;
    `dones[t]`: the episode ended at step t (terminated or truncated: no bootstrap through it).
    """
    # a loop over time on numpy scalars-per-env: a torch op per element costs ~10x more
    r, v = rewards.detach().cpu().double().numpy(), values.detach().cpu().double().numpy()
    live = 1.0 - dones.detach().cpu().numpy().astype(np.float64)
    advantages = np.zeros_like(r)
    running = np.zeros_like(r[0])
    next_values = last_values.detach().cpu().double().numpy()
    for t in range(r.shape[0] - 1, -1, -1):
        delta = r[t] + gamma * next_values * live[t] - v[t]
        running = delta + gamma * gae_lambda * live[t] * running
        advantages[t] = running
        next_values = v[t]
    return torch.from_numpy(advantages).to(device=rewards.device, dtype=rewards.dtype)


def clipped_policy_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """−E[min(r·A, clip(r, 1−ε, 1+ε)·A)], r = π/π_old, of each seed: (S, batch) → (S,)."""
    ratio = per_seed_elementwise(torch.exp, log_probs - old_log_probs)
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean(dim=-1)


def seed_gradient_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S,): the 2-norm of each seed's slices of all `tensors` (S, ...) together, in their dtype (the
    gradient norm that clipping scales by, every minibatch: one fused call over each seed's
    contiguous slices). A reduction over dim 1 of (S, n) would split its work by the whole tensor's
    size, so a seed would round differently in a batch than alone; the float64 metric version is
    `lop_ray.plasticity_metrics.per_seed_norm`."""
    seeds = tensors[0].shape[0]
    norms = torch._foreach_norm([t[k] for t in tensors for k in range(seeds)])
    return torch.stack([torch.linalg.vector_norm(torch.stack(norms[k::seeds])) for k in range(seeds)])


@dataclass
class Batch:
    """One iteration's data of S seeds, each seed's flattened over (time, env) in time-major order:
    (S, steps, ...)."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor  # normalised per seed
    returns: torch.Tensor


class PPOLearner:
    """Policy, value network, one Adam over both (and the log-std), and the interventions, for S
    seeds (the networks' seed axis): every seed's minibatches are drawn from its own generator and
    its loss is its own, so the seeds' updates are independent; summing the seeds' losses makes one
    backward pass compute them all."""

    def __init__(
        self,
        policy: GaussianPolicy,
        value: ValueNetwork,
        optimizer: torch.optim.Optimizer,
        config: PPOConfig,
        generators: Sequence[torch.Generator] | torch.Generator,
        policy_interventions: Sequence[Intervention] = (),
        value_interventions: Sequence[Intervention] = (),
    ) -> None:
        self.policy = policy
        self.value = value
        self.optimizer = optimizer
        self.config = config
        # minibatch order, one per seed
        self.generators = [generators] if isinstance(generators, torch.Generator) else list(generators)
        if len(self.generators) != policy.num_seeds:
            raise ValueError(f"{len(self.generators)} generators for {policy.num_seeds} seeds")
        self.policy_interventions = list(policy_interventions)
        self.value_interventions = list(value_interventions)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]

    @property
    def num_seeds(self) -> int:
        return len(self.generators)

    def batch(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_log_probs: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        last_obs: torch.Tensor,
    ) -> Batch:
        """Advantages and value targets of a (time, seed, env, ...) rollout (`last_obs` (seed, env,
        obs)), with the current value net."""
        cfg = self.config
        steps, seeds, envs = rewards.shape

        def per_seed(x: torch.Tensor) -> torch.Tensor:  # (time, seed, env, ...) → (seed, time·env, ...)
            return x.transpose(0, 1).reshape(seeds, steps * envs, *x.shape[3:]).contiguous()

        with torch.no_grad():
            # the last observations in the same pass: a batched product of a few rows (one per env)
            # would take a path whose sums depend on S
            every, _ = self.value.value(torch.cat([per_seed(obs), last_obs], dim=1))
        values = every[:, : steps * envs].reshape(seeds, steps, envs).transpose(0, 1)  # (time, seed, env)
        last_values = every[:, steps * envs :]
        advantages = gae(
            rewards.reshape(steps, -1),
            values.reshape(steps, -1),
            last_values.reshape(-1),
            dones.reshape(steps, -1),
            cfg.gamma,
            cfg.gae_lambda,
        ).reshape(steps, seeds, envs)
        returns = per_seed(advantages + values)
        # seed by seed: a reduction's order of summation depends on the whole tensor's shape
        advantages = torch.stack([(a - a.mean()) / (a.std() + 1e-8) for a in per_seed(advantages)])
        return Batch(per_seed(obs), per_seed(actions), per_seed(old_log_probs), advantages, returns)

    def update(self, batch: Batch) -> dict[str, list[float]]:
        """`epochs` shuffled passes over `batch`; returns each seed's losses of the iteration, the
        mean gradient norm of its minibatches (before clipping: the plasticity metric) and its
        policy's weight change.

        On the CPU it uses at most one thread per seed: with more threads than seeds a seed's GEMMs
        are split across threads (MKL splits the sums of one product), so a seed alone would
        compute other roundings than in a batch, where each thread takes its own seeds' products
        (measured on an AMD EPYC host: Hopper returns 4e-10 apart after one update)."""
        threads = torch.get_num_threads()
        if batch.obs.device.type != "cpu" or threads <= self.num_seeds:
            return self._update(batch)
        torch.set_num_threads(self.num_seeds)
        try:
            return self._update(batch)
        finally:
            torch.set_num_threads(threads)

    def _update(self, batch: Batch) -> dict[str, list[float]]:
        cfg = self.config
        size = batch.advantages.shape[1]
        if size % cfg.minibatch_size:
            raise ValueError(f"minibatch_size {cfg.minibatch_size} must divide the batch ({size} steps)")
        before = [w.detach().clone() for w in self.policy.weight_matrices()]
        policy_losses, value_losses, clipped, norms = [], [], [], []
        for _ in range(cfg.epochs):
            orders = torch.stack([torch.randperm(size, generator=g) for g in self.generators])
            for index in orders.to(batch.obs.device).split(cfg.minibatch_size, dim=1):
                policy_loss, value_loss, clip_fraction, norm = self._minibatch_step(batch, index)
                norms.append(norm)
                policy_losses.append(policy_loss)
                value_losses.append(value_loss)
                clipped.append(clip_fraction)
        change = [
            sum(
                float((w[k].detach() - b[k]).abs().sum())
                for w, b in zip(self.policy.weight_matrices(), before, strict=True)
            )
            for k in range(self.num_seeds)
        ]

        def mean(values: list[torch.Tensor]) -> list[float]:  # over the minibatches, per seed
            return [float(row.mean()) for row in torch.stack(values, dim=1)]

        return {
            "policy_loss": mean(policy_losses),
            "value_loss": mean(value_losses),
            "clip_fraction": mean(clipped),
            "gradient_norm": mean(norms),  # before clipping
            "weight_change": change,
        }

    def _minibatch_step(self, batch: Batch, index: torch.Tensor):
        """One Adam step of every seed on its minibatch `index` (seed, minibatch) of `batch`."""
        cfg = self.config
        seeds = torch.arange(self.num_seeds, device=index.device).unsqueeze(1)
        obs = batch.obs[seeds, index]
        mean, policy_hidden = self.policy(obs)
        log_probs = self.policy.log_prob(mean, batch.actions[seeds, index])
        old = batch.old_log_probs[seeds, index]
        policy_loss = clipped_policy_loss(log_probs, old, batch.advantages[seeds, index], cfg.clip)
        values, value_hidden = self.value.value(obs)
        value_loss = (values - batch.returns[seeds, index]).square().mean(dim=1)
        loss = policy_loss + cfg.value_coef * value_loss
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * self.policy.entropy()
        # the seeds' losses summed: each seed's parameters get the gradient of its own loss
        grads = list(torch.autograd.grad(loss.sum(), self._params, allow_unused=True))
        for intervention in self.policy_interventions + self.value_interventions:
            add_gradient = getattr(intervention, "add_gradient", None)
            if add_gradient is not None:  # a term of the loss (Parseval regularisation)
                add_gradient(self._params, grads)
        total = seed_gradient_norms([g for g in grads if g is not None])
        if cfg.max_grad_norm is not None:
            scale = (cfg.max_grad_norm / (total + 1e-6)).clamp(max=1.0)
            grads = [None if g is None else g * scale.reshape(-1, *([1] * (g.dim() - 1))) for g in grads]
        apply_gradients = getattr(self.optimizer, "apply_gradients", None)
        if apply_gradients is not None:
            apply_gradients(grads)
        else:  # a torch.optim optimizer
            for param, grad in zip(self._params, grads, strict=True):
                param.grad = grad
            self.optimizer.step()
        with torch.no_grad():
            for intervention in self.policy_interventions:
                intervention.after_step([h.detach() for h in policy_hidden])
            for intervention in self.value_interventions:
                intervention.after_step([h.detach() for h in value_hidden])
            ratio = per_seed_elementwise(torch.exp, log_probs - old)
            clip_fraction = ((ratio - 1.0).abs() > cfg.clip).float().mean(dim=1)
        return policy_loss.detach(), value_loss.detach(), clip_fraction, total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "policy_interventions": [i.state_dict() for i in self.policy_interventions],
            "value_interventions": [i.state_dict() for i in self.value_interventions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.optimizer.load_state_dict(state["optimizer"])
        if len(state["generators"]) != len(self.generators):
            raise ValueError(
                f"checkpoint holds {len(state['generators'])} seeds, this learner has {self.num_seeds}"
            )
        for g, saved in zip(self.generators, state["generators"], strict=True):
            g.set_state(saved.cpu())
        for mine, saved in (
            (self.policy_interventions, state["policy_interventions"]),
            (self.value_interventions, state["value_interventions"]),
        ):
            if len(mine) != len(saved):
                raise ValueError(f"checkpoint holds {len(saved)} interventions, this learner has {len(mine)}")
            for intervention, part in zip(mine, saved, strict=True):
                intervention.load_state_dict(part)
