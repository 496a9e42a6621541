"""ReDo (Sokar et al. 2023): every `reset_period` optimizer steps, re-initialise the dormant units.

A unit is dormant when its score s_i = mean|h_i| / mean_j mean|h_j| over the current (mini)batch is
at most `threshold` τ (spec/algorithms.md). Its incoming weights are redrawn with the layer's init
bound, its bias and outgoing weights zeroed; the optimizer's entries of those weights are restarted
when `reset_optimizer_state` (the corrected behaviour, spec/fidelity.md row 8; the original kept them).
A layer whose activations are all zero has no defined score (0/0) and is left alone, as in the
original. Runs over the same `UnitGroup`s as continual backprop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lop_ray.algos.cbp import InitScheme
from lop_ray.algos.optim import per_element_state
from lop_ray.nets.activations import init_bound
from lop_ray.nets.units import SeedView, UnitGroup


@dataclass(frozen=True)
class ReDoConfig:
    threshold: float = 0.1
    reset_period: int = 100
    init: InitScheme = "lecun"
    reset_optimizer_state: bool = True

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")
        if self.reset_period < 1:
            raise ValueError(f"reset_period must be >= 1, got {self.reset_period}")


class ReDo:
    """An after-step intervention (see `lop_ray.algos.backprop.Intervention`) over groups of S
    seeds (`lop_ray.nets.units`; one seed: S = 1), each seed scored and reset on its own, drawing
    new weights from its own generator."""

    def __init__(
        self,
        groups: Sequence[UnitGroup],
        optimizer: torch.optim.Optimizer,
        config: ReDoConfig,
        generators: Sequence[torch.Generator | None] | torch.Generator | None,
    ) -> None:
        self.groups = list(groups)
        self.optimizer = optimizer
        self.config = config
        if generators is None or isinstance(generators, torch.Generator):
            generators = [generators]
        self.generators = list(generators)
        self.steps = 0
        self.replaced_total = torch.zeros(len(self.generators), dtype=torch.long)

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        if len(activations) != len(self.groups):
            raise ValueError(f"{len(activations)} activations for {len(self.groups)} unit groups")
        self.steps += 1
        if self.steps % self.config.reset_period:
            return
        # score every layer first: re-initialising one layer zeroes the next one's incoming weights
        dormant = [
            self.dormant(group.seed_activations(h)) for group, h in zip(self.groups, activations, strict=True)
        ]
        for group, mask in zip(self.groups, dormant, strict=True):
            for seed, row in enumerate(mask.cpu()):
                units = torch.nonzero(row).reshape(-1)
                if len(units):
                    self.reinitialise(group, seed, units.to(group.incoming.tensor.device))

    def dormant(self, h: torch.Tensor) -> torch.Tensor:
        """(S, width) mask of the units with score ≤ τ on activations `h` (S, batch, units, …)."""
        per_unit = h.abs().reshape(h.shape[0], h.shape[1], h.shape[2], -1).mean(dim=(1, 3))
        layer_mean = per_unit.mean(dim=1, keepdim=True)
        # 0/0: no score, nothing reset (the original's NaN comparison)
        return (per_unit / layer_mean <= self.config.threshold) & (layer_mean != 0)

    def reinitialise(self, group: UnitGroup, seed: int, units: torch.Tensor) -> None:
        """Seed `seed`'s `units` of `group` as ReDo restarts them (self-normalised resets too)."""
        incoming = group.incoming.of()[seed]
        bound = init_bound(self.config.init, group.activation, group.fan_in, group.fan_out)
        fresh = torch.empty((len(units), *incoming.shape[1:]), dtype=incoming.dtype, device=incoming.device)
        incoming[units] = fresh.uniform_(-bound, bound, generator=self.generators[seed])
        writes = [(group.incoming, 0.0), (group.incoming_bias, 0.0), (group.outgoing, 0.0)]
        writes += [(entry.view, entry.fresh) for entry in group.norm]
        for view, value in writes[1:]:
            if view is not None:
                _write(group, view, None, seed, units, value)
        if self.config.reset_optimizer_state:
            for view, _ in writes:
                if view is None:
                    continue
                for tensor in per_element_state(self.optimizer, view.tensor):
                    _write(group, view, tensor, seed, units, 0.0)
        self.replaced_total[seed] += len(units)

    def state_dict(self) -> dict[str, Any]:
        states = [None if g is None else g.get_state() for g in self.generators]
        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "replaced_total": self.replaced_total.clone(),
            "generators": states,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with ReDo config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.replaced_total = torch.as_tensor(state["replaced_total"]).clone().reshape(len(self.generators))
        for generator, saved in zip(self.generators, state.get("generators", ()), strict=False):
            if generator is not None and saved is not None:
                generator.set_state(saved.cpu())


def _write(group: UnitGroup, view: SeedView, like: torch.Tensor | None, seed: int, units, value) -> None:
    """Set seed `seed`'s entries of `units` in `view` (or in `like`, its optimizer state) to `value`."""
    if view is group.outgoing:
        group.outgoing_by_unit(like)[seed][:, units] = value
    else:
        view.of(like)[seed][units] = value
