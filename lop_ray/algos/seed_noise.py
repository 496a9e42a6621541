"""Per-seed Gaussian noise shaped like a network's parameters, the same for a seed alone and in any
batch: shrink-and-perturb's perturbation and UPGD's gradient noise draw from it.

Small networks (regression, permuted MNIST's MLPs) draw counter-based: a function of (seed key,
step, element), for all seeds in one call, because there a step's cost is its number of calls. A
seed with more than `generator_limit` values per step (ResNet-18: 11M) draws from its own generator
instead, one call per parameter and seed: the counter hash costs ~30 integer operations a value,
more than the network's step at that size. The rule depends on the seed's own parameter count, not
on S.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lop_ray.algos.counter_rng import CounterNoise
from lop_ray.nets.units import SeedView


class SeedNoise:
    """`draw()`: one N(0, 1) tensor per view, in the view's seed-first shape; each call is the next
    step's."""

    generator_limit = 1 << 20

    def __init__(
        self,
        views: Sequence[SeedView],
        keys: torch.Tensor,
        stream: int,
        generators: Sequence[torch.Generator] | None = None,
        generator_limit: int = generator_limit,
    ) -> None:
        self.views = list(views)
        seeds = {view.seeds for view in self.views}
        if seeds != {len(keys)}:
            raise ValueError(f"parameters hold {sorted(seeds)} seeds, {len(keys)} keys given")
        self.sizes = [view.of()[0].numel() for view in self.views]
        self.generators = None
        if sum(self.sizes) > generator_limit:
            if generators is None or len(generators) != len(keys):
                raise ValueError(f"{sum(self.sizes):,} values per seed: one generator per seed needed")
            self.generators = list(generators)
        else:
            dtype = self.views[0].tensor.dtype
            self.noise = CounterNoise(keys, stream, sum(self.sizes), "normal", dtype)
        self.steps = 0

    def draw(self) -> list[torch.Tensor]:
        if self.generators is not None:
            drawn = []
            for view in self.views:
                rows = view.of()
                drawn.append(
                    torch.stack(
                        [
                            torch.randn(row.shape, generator=g, device=row.device, dtype=row.dtype)
                            for row, g in zip(rows, self.generators, strict=True)
                        ]
                    )
                )
        else:
            pieces = self.noise.at(self.steps).split(self.sizes, dim=1)
            drawn = [noise.reshape(view.shape) for view, noise in zip(self.views, pieces, strict=True)]
        self.steps += 1
        return drawn

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.generators is not None:
            state["generators"] = [g.get_state() for g in self.generators]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for generator, saved in zip(self.generators or (), state.get("generators", ()), strict=True):
            generator.set_state(saved.cpu())
