"""The unit-group contract: what one generic generate-and-test needs to know about a network.

A *unit* is a hidden feature (a row of a linear layer, an output channel of a conv layer). CBP and
ReDo replace units; to do so they touch the unit's incoming weights and bias, the matching entries of
an optional norm layer, and the unit's outgoing weights in the next weight layer. Every network in
`lop_ray.nets` lists its hidden layers as `UnitGroup`s in forward order and returns, from the same
forward pass that computes its output, one activation tensor per group. Nothing else about the
network's structure is visible to the algorithms, so one CBP serves MLPs, conv nets and ResNets.

All indexing of a unit's weights lives here: incoming weights are rows (dim 0) of `incoming`, and
outgoing weights are columns (dim 1) of `outgoing`, `fan_out_per_unit` consecutive columns per unit
when a conv layer is flattened into a linear one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UnitGroup:
    """One replaceable hidden layer.

    `activation` names the nonlinearity whose gain sets the initialisation bound of new units.
    `fan_out_per_unit` is the number of consecutive input columns of `outgoing` that one unit feeds
    (H·W when a conv layer is flattened into a linear layer; 1 otherwise).
    """

    name: str
    incoming: nn.Linear | nn.Conv2d
    outgoing: nn.Linear | nn.Conv2d
    activation: str
    norm: nn.Module | None = None  # BatchNorm1d/2d, or any norm with `reset_units(units)`
    fan_out_per_unit: int = 1

    @property
    def width(self) -> int:
        return self.incoming.weight.shape[0]

    @property
    def fan_in(self) -> int:
        return self.incoming.weight[0].numel()

    @property
    def fan_out(self) -> int:
        """Fan-out of one unit as `xavier` initialisation counts it (that of the incoming layer)."""
        weight = self.incoming.weight
        return weight.shape[0] * weight[0, 0].numel()

    def outgoing_columns(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along dim 1 of `outgoing.weight` that belong to `units`, unit-major."""
        span = torch.arange(self.fan_out_per_unit, device=units.device)
        return (units[:, None] * self.fan_out_per_unit + span).reshape(-1)

    def outgoing_magnitude(self) -> torch.Tensor:
        """Mean |outgoing weight| of each unit, over every output and column it feeds."""
        weight = self.outgoing.weight.detach().abs()
        if weight.dim() == 2 and self.fan_out_per_unit == 1:  # linear → linear, the hot path
            return weight.mean(dim=0)
        per_column = weight.transpose(0, 1).reshape(weight.shape[1], -1).mean(dim=1)
        return per_column.reshape(self.width, self.fan_out_per_unit).mean(dim=1)

    def incoming_magnitude(self) -> torch.Tensor:
        """Mean |incoming weight| of each unit."""
        weight = self.incoming.weight.detach().abs()
        return weight.mean(dim=1) if weight.dim() == 2 else weight.reshape(self.width, -1).mean(dim=1)

    def outgoing_sum(self, units: torch.Tensor) -> torch.Tensor:
        """(units, out_features): each unit's outgoing weights summed over its columns and kernel.

        This is what multiplies a unit's mean activation when its contribution is moved into the next
        layer's bias.
        """
        weight = self.outgoing.weight.detach()[:, self.outgoing_columns(units)]
        weight = weight.reshape(weight.shape[0], len(units), self.fan_out_per_unit, -1)
        return weight.sum(dim=(2, 3)).transpose(0, 1)


class UnitNetwork(nn.Module, abc.ABC):
    """A network whose `forward(x)` returns `(output, activations)`, one activation per unit group."""

    @abc.abstractmethod
    def unit_groups(self) -> list[UnitGroup]:
        """The hidden layers that CBP and ReDo may replace units of, in forward order."""
