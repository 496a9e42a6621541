"""Shrink-and-perturb's perturbation. The shrink is the optimizer's coupled weight decay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lop_ray.algos.seed_noise import SeedNoise
from lop_ray.nets.units import SeedView


class ShrinkAndPerturb:
    """Adds N(0, perturb_scale²) noise to each given parameter after every optimizer step.

    The parameters are seen with their seed axis (`SeedView`, S = 1 for one seed's modules), and
    seed s's noise depends on s alone, whatever batch it runs in (`SeedNoise`: counter-based for
    small networks, a generator per seed for large ones). Which parameters are perturbed differs
    per problem (linear/conv weights and biases; every parameter in CIFAR), so the caller passes them.
    """

    # stream 1000: apart from continual backprop's per-group streams (0, 1, 2, …) on the same keys
    stream = 1000
    generator_limit = SeedNoise.generator_limit

    def __init__(
        self,
        parameters: Sequence[SeedView],
        perturb_scale: float,
        keys: torch.Tensor,
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        self.parameters = list(parameters)
        self.perturb_scale = perturb_scale
        self.noise = SeedNoise(self.parameters, keys, self.stream, generators, self.generator_limit)

    @property
    def steps(self) -> int:
        return self.noise.steps

    @property
    def generators(self) -> list[torch.Generator] | None:
        return self.noise.generators

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        for view, noise in zip(self.parameters, self.noise.draw(), strict=True):
            view.of().add_(noise, alpha=self.perturb_scale)

    def state_dict(self) -> dict[str, Any]:
        return self.noise.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise.load_state_dict(state)
