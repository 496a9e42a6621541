"""Interventions for seed-batched learners (`lop_ray.nets.seed_batched_mlp`): the same algorithms,
with every per-step draw counter-based (`counter_rng`) so that a seed draws what it draws alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lop_ray.algos.counter_rng import normal


class SeedBatchedShrinkAndPerturb:
    """Adds N(0, perturb_scale²) noise to each (S, …) parameter after every optimizer step; the
    noise of seed s at step t is a function of (s's key, t, parameter index) only."""

    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], perturb_scale: float, keys: torch.Tensor
    ) -> None:
        self.parameters = list(parameters)
        self.perturb_scale = perturb_scale
        self.keys = keys
        self.steps = 0

    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for index, param in enumerate(self.parameters):
                noise = normal(self.keys, self.steps, index, param[0].numel(), param.dtype)
                param.add_(noise.view_as(param), alpha=self.perturb_scale)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
