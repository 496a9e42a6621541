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

from lop_ray.algos.cbp import InitScheme, _reset_norm_entries
from lop_ray.algos.optim import reset_optimizer_entries
from lop_ray.nets.activations import init_bound
from lop_ray.nets.units import UnitGroup


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
    """An after-step intervention (see `lop_ray.algos.backprop.Intervention`)."""

    def __init__(
        self,
        groups: Sequence[UnitGroup],
        optimizer: torch.optim.Optimizer,
        config: ReDoConfig,
        generator: torch.Generator,
    ) -> None:
        self.groups = list(groups)
        self.optimizer = optimizer
        self.config = config
        self.generator = generator
        self.steps = 0
        self.replaced_total = 0

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        if len(activations) != len(self.groups):
            raise ValueError(f"{len(activations)} activations for {len(self.groups)} unit groups")
        self.steps += 1
        if self.steps % self.config.reset_period:
            return
        # score every layer first: re-initialising one layer zeroes the next one's incoming weights
        chosen = [self.dormant(h) for h in activations]
        for group, units in zip(self.groups, chosen, strict=True):
            if len(units):
                self._reinitialise(group, units.to(group.incoming.weight.device))

    def dormant(self, h: torch.Tensor) -> torch.Tensor:
        """Indices of the units with score ≤ τ on activations `h` (batch × units)."""
        per_unit = h.abs().reshape(h.shape[0], h.shape[1], -1).mean(dim=(0, 2))
        layer_mean = per_unit.mean()
        if layer_mean == 0:  # 0/0: no score, nothing reset (the original's NaN comparison)
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(per_unit / layer_mean <= self.config.threshold).reshape(-1)

    def _reinitialise(self, group: UnitGroup, units: torch.Tensor) -> None:
        incoming, outgoing = group.incoming, group.outgoing
        bound = init_bound(self.config.init, group.activation, group.fan_in, group.fan_out)
        fresh = torch.empty(
            (len(units), *incoming.weight.shape[1:]),
            dtype=incoming.weight.dtype,
            device=incoming.weight.device,
        )
        incoming.weight[units] = fresh.uniform_(-bound, bound, generator=self.generator)
        if incoming.bias is not None:
            incoming.bias[units] = 0.0
        columns = group.outgoing_columns(units)
        outgoing.weight[:, columns] = 0.0
        if group.norm is not None:
            _reset_norm_entries(group.norm, units)
        if self.config.reset_optimizer_state:
            reset_optimizer_entries(self.optimizer, incoming.weight, (units,))
            if incoming.bias is not None:
                reset_optimizer_entries(self.optimizer, incoming.bias, (units,))
            reset_optimizer_entries(self.optimizer, outgoing.weight, (slice(None), columns))
        self.replaced_total += len(units)

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "steps": self.steps, "replaced_total": self.replaced_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with ReDo config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.replaced_total = int(state["replaced_total"])
