"""Shrink-and-perturb's perturbation. The shrink is the optimizer's coupled weight decay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lop_ray.algos.counter_rng import CounterNoise
from lop_ray.nets.units import SeedView


class ShrinkAndPerturb:
    """Adds N(0, perturb_scale²) noise to each given parameter after every optimizer step.

    The parameters are seen with their seed axis (`SeedView`, S = 1 for one seed's modules), and
    seed s's noise depends on s alone, whatever batch it runs in. Small networks (regression,
    permuted MNIST's MLPs) draw it counter-based: a function of (s's key, step, element), for all
    seeds in one call, because there a step's cost is its number of calls. A seed with more than
    `generator_limit` values per step (ResNet-18: 11M) draws from its own generator instead, one
    call per parameter and seed: the counter hash costs ~30 integer operations a value, more than
    the network's step at that size. The rule depends on the seed's own parameter count, not on S.
    Which parameters are perturbed differs per problem (linear/conv weights and biases; every
    parameter in CIFAR), so the caller passes them.
    """

    # stream 1000: apart from continual backprop's per-group streams (0, 1, 2, …) on the same keys
    stream = 1000
    generator_limit = 1 << 20

    def __init__(
        self,
        parameters: Sequence[SeedView],
        perturb_scale: float,
        keys: torch.Tensor,
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        self.parameters = list(parameters)
        self.perturb_scale = perturb_scale
        seeds = {view.seeds for view in self.parameters}
        if seeds != {len(keys)}:
            raise ValueError(f"parameters hold {sorted(seeds)} seeds, {len(keys)} keys given")
        self.sizes = [view.of()[0].numel() for view in self.parameters]
        self.generators = None
        if sum(self.sizes) > self.generator_limit:
            if generators is None or len(generators) != len(keys):
                raise ValueError(f"{sum(self.sizes):,} values per seed: one generator per seed needed")
            self.generators = list(generators)
        else:
            dtype = self.parameters[0].tensor.dtype
            self.noise = CounterNoise(keys, self.stream, sum(self.sizes), "normal", dtype)
        self.steps = 0

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        if self.generators is not None:
            for view in self.parameters:
                target = view.of()
                for row, generator in zip(target, self.generators, strict=True):
                    noise = torch.randn(row.shape, generator=generator, device=row.device, dtype=row.dtype)
                    row.add_(noise, alpha=self.perturb_scale)
        else:
            pieces = self.noise.at(self.steps).split(self.sizes, dim=1)
            for view, noise in zip(self.parameters, pieces, strict=True):
                target = view.of()
                target.add_(noise.reshape(target.shape), alpha=self.perturb_scale)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.generators is not None:
            state["generators"] = [g.get_state() for g in self.generators]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for generator, saved in zip(self.generators or (), state.get("generators", ()), strict=True):
            generator.set_state(saved.cpu())
