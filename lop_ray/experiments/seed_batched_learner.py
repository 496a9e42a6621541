"""The learner of a seed-batched trial: the same algorithms as `build_learner`, over a
`SeedBatchedMLP`, with every per-seed random draw taken as that seed alone would take it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lop_ray.algos import Backprop
from lop_ray.algos.counter_rng import seed_keys
from lop_ray.algos.seed_batched import SeedBatchedContinualBackprop, SeedBatchedShrinkAndPerturb
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.experiments.learner import LearnerSettings, optimizer_for
from lop_ray.nets.seed_batched_mlp import SeedBatchedMLP


def build_seed_batched_learner(
    net: SeedBatchedMLP,
    settings: LearnerSettings,
    seeds: Sequence[int],
    device: torch.device,
    loss_fn: Callable,
) -> tuple[Backprop, SeedBatchedContinualBackprop | None]:
    """Backprop with the interventions the algorithm asks for (CBP, then shrink-and-perturb)."""
    optimizer = optimizer_for(net.parameters(), settings)
    keys = seed_keys(list(seeds), device)
    interventions = []
    cbp = None
    if settings.cbp is not None:
        # each seed's replacements draw from that seed's learner generator, as they do alone
        generators = [generator(seed, LEARNER, device=device) for seed in seeds]
        cbp = SeedBatchedContinualBackprop(net, optimizer, settings.cbp, generators, keys)
        interventions.append(cbp)
    if settings.perturb_scale > 0:
        interventions.append(SeedBatchedShrinkAndPerturb(net.parameters(), settings.perturb_scale, keys))
    return Backprop(net, optimizer, loss_fn, interventions), cbp


def initial_network(sizes: Sequence[int], activation: str, seeds: Sequence[int]) -> SeedBatchedMLP:
    """Seed s's slice is exactly the network its single-seed experiment starts from (drawn on the
    CPU from the CPU generator (seed, LEARNER, 0), so it does not depend on the device)."""
    return SeedBatchedMLP(sizes, activation, [generator(seed, LEARNER, 0) for seed in seeds])
