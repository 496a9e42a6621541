"""Running mean and variance, and the observation and reward normalisers PPO builds on them.

The paper's PPO runs without normalisation (spec/problems.md §5); both are options. They live with the
learner, not in the env runners: runners normalise with the statistics they are sent, and the learner
updates the statistics from each whole batch, so every runner sees the same numbers and the result
does not depend on how envs are spread over runners. Statistics are float64 tensors and part of the
checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch


class RunningMeanStd:
    """Mean and (population) variance of everything seen so far, merged a batch at a time
    (Chan et al.'s parallel update, as gymnasium's `RunningMeanStd`)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        # epsilon: a tiny prior count, so the first batch does not divide by zero
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.var = torch.ones(shape, dtype=torch.float64)
        self.count = torch.tensor(epsilon, dtype=torch.float64)

    def update(self, batch: torch.Tensor) -> None:
        """Merge `batch` (rows = samples) into the statistics."""
        batch = batch.detach().to(torch.float64).reshape(-1, *self.mean.shape)
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = (
            self.var * self.count
            + batch_var * batch_count
            + delta.square() * self.count * batch_count / total
        )
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"].to(torch.float64).cpu().clone()
        self.var = state["var"].to(torch.float64).cpu().clone()
        self.count = state["count"].to(torch.float64).cpu().clone()


def normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, clip: float, eps: float = 1e-8):
    """(x − mean)/√(var + eps), clipped to ±clip; elementwise, so a runner normalising one step and
    the learner normalising the whole batch get bit-identical numbers."""
    scaled = (x - mean.to(x.dtype)) / torch.sqrt(var.to(x.dtype) + eps)
    return scaled.clamp(-clip, clip)


class RewardScaler:
    """Rewards divided by the running standard deviation of each env's discounted return (as
    gymnasium's `NormalizeReward`), computed by the learner over the batch in time order."""

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0) -> None:
        self.gamma = gamma
        self.clip = clip
        self.returns = torch.zeros(num_envs, dtype=torch.float64)
        self.stats = RunningMeanStd()

    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Scaled rewards of a (time, env) batch; updates the statistics step by step, as the
        gymnasium wrapper does, so each reward is scaled by the statistics up to its own step."""
        scaled = torch.empty_like(rewards)
        for t in range(rewards.shape[0]):
            self.returns = self.returns * self.gamma + rewards[t].to(torch.float64)
            self.stats.update(self.returns)
            std = torch.sqrt(self.stats.var + 1e-8)
            scaled[t] = (rewards[t].to(torch.float64) / std).clamp(-self.clip, self.clip).to(rewards.dtype)
            self.returns = self.returns * (~dones[t]).to(torch.float64)
        return scaled

    def state_dict(self) -> dict[str, Any]:
        return {"returns": self.returns.clone(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = state["returns"].to(torch.float64).cpu().clone()
        self.stats.load_state_dict(state["stats"])
