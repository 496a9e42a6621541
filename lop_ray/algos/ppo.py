"""Clipped PPO with GAE, as the paper's code runs it (spec/algorithms.md, PPO).

One iteration learns from a batch of consecutive env steps: GAE(γ, λ) advantages with a time-limit
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
    """−E[min(r·A, clip(r, 1−ε, 1+ε)·A)], r = π/π_old."""
    ratio = torch.exp(log_probs - old_log_probs)
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip)
    return -torch.minimum(ratio * advantages, clipped * advantages).mean()


@dataclass
class Batch:
    """One iteration's data, flattened over (time, env) in time-major order."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor  # normalised
    returns: torch.Tensor


class PPOLearner:
    """Policy, value network, one Adam over both (and the log-std), and the interventions."""

    def __init__(
        self,
        policy: GaussianPolicy,
        value: ValueNetwork,
        optimizer: torch.optim.Optimizer,
        config: PPOConfig,
        generator: torch.Generator,
        policy_interventions: Sequence[Intervention] = (),
        value_interventions: Sequence[Intervention] = (),
    ) -> None:
        self.policy = policy
        self.value = value
        self.optimizer = optimizer
        self.config = config
        self.generator = generator  # minibatch order
        self.policy_interventions = list(policy_interventions)
        self.value_interventions = list(value_interventions)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]

    def batch(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_log_probs: torch.Tensor,
        rewards: torch.Tensor,
        dones: torch.Tensor,
        last_obs: torch.Tensor,
    ) -> Batch:
        """Advantages and value targets of a (time, env, ...) rollout, with the current value net."""
        cfg = self.config
        steps, envs = rewards.shape
        with torch.no_grad():
            values, _ = self.value.value(obs.reshape(steps * envs, -1))
            last_values, _ = self.value.value(last_obs)
        values = values.reshape(steps, envs)
        advantages = gae(rewards, values, last_values, dones, cfg.gamma, cfg.gae_lambda)
        returns = (advantages + values).reshape(-1)
        advantages = advantages.reshape(-1)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return Batch(
            obs.reshape(steps * envs, -1),
            actions.reshape(steps * envs, -1),
            old_log_probs.reshape(-1),
            advantages,
            returns,
        )

    def update(self, batch: Batch) -> dict[str, float]:
        """`epochs` shuffled passes over `batch`; returns the iteration's losses, the mean gradient
        norm of its minibatches (before clipping: the plasticity metric) and its weight change."""
        cfg = self.config
        size = batch.advantages.shape[0]
        if size % cfg.minibatch_size:
            raise ValueError(f"minibatch_size {cfg.minibatch_size} must divide the batch ({size} steps)")
        before = [w.detach().clone() for w in self.policy.weight_matrices()]
        policy_losses, value_losses, clipped, norms = [], [], [], []
        for _ in range(cfg.epochs):
            order = torch.randperm(size, generator=self.generator).to(batch.obs.device)
            for index in order.split(cfg.minibatch_size):
                policy_loss, value_loss, clip_fraction, norm = self._minibatch_step(batch, index)
                norms.append(norm)
                policy_losses.append(policy_loss)
                value_losses.append(value_loss)
                clipped.append(clip_fraction)
        change = sum(
            float((w.detach() - b).abs().sum())
            for w, b in zip(self.policy.weight_matrices(), before, strict=True)
        )
        return {
            "policy_loss": float(torch.stack(policy_losses).mean()),
            "value_loss": float(torch.stack(value_losses).mean()),
            "clip_fraction": float(torch.stack(clipped).mean()),
            "gradient_norm": float(torch.stack(norms).mean()),  # before clipping
            "weight_change": change,
        }

    def _minibatch_step(self, batch: Batch, index: torch.Tensor):
        cfg = self.config
        obs = batch.obs[index]
        mean, policy_hidden = self.policy(obs)
        log_probs = self.policy.log_prob(mean, batch.actions[index])
        old = batch.old_log_probs[index]
        policy_loss = clipped_policy_loss(log_probs, old, batch.advantages[index], cfg.clip)
        values, value_hidden = self.value.value(obs)
        value_loss = (values - batch.returns[index]).square().mean()
        loss = policy_loss + cfg.value_coef * value_loss
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * self.policy.entropy()
        grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        present = [g for g in grads if g is not None]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
        if cfg.max_grad_norm is not None:
            scale = (cfg.max_grad_norm / (total + 1e-6)).clamp(max=1.0)
            grads = [g * scale if g is not None else None for g in grads]
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
            clip_fraction = ((log_probs - old).exp().sub(1.0).abs() > cfg.clip).float().mean()
        return policy_loss.detach(), value_loss.detach(), clip_fraction, total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "policy_interventions": [i.state_dict() for i in self.policy_interventions],
            "value_interventions": [i.state_dict() for i in self.value_interventions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        for mine, saved in (
            (self.policy_interventions, state["policy_interventions"]),
            (self.value_interventions, state["value_interventions"]),
        ):
            if len(mine) != len(saved):
                raise ValueError(f"checkpoint holds {len(saved)} interventions, this learner has {len(mine)}")
            for intervention, part in zip(mine, saved, strict=True):
                intervention.load_state_dict(part)
