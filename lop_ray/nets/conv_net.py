"""Continual ImageNet's networks (spec/networks.md, problems.md §3): the small conv net and the linear
baseline, both with PyTorch's default initialisation drawn from the seed's generator.

Conv net: conv 3→32 5×5 → ReLU → maxpool 2 → conv 32→64 3×3 → ReLU → maxpool 2 → conv 64→128 3×3 →
ReLU → maxpool 2 → flatten (128·2·2 = 512) → fc 128 → ReLU → fc 128 → ReLU → fc 2. Its five hidden
layers are unit groups: conv→conv twice, conv→linear (each channel owns the 2·2 = 4 consecutive
columns it is flattened into) and linear→linear twice. The features CBP and the metrics read are taken
after ReLU and max-pool, as in the original.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lop_ray.nets.units import UnitGroup, UnitNetwork

IMAGE_SHAPE = (3, 32, 32)


def default_init(layer: nn.Linear | nn.Conv2d, generator: torch.Generator | None) -> None:
    """PyTorch's default init of a linear/conv layer, U(±1/√fan_in) for weights and biases, drawn from
    `generator` (PyTorch's own `reset_parameters` can only draw from the global RNG)."""
    bound = 1.0 / math.sqrt(layer.weight[0].numel())
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)


class ConvNet(UnitNetwork):
    """The paper's conv net for 32×32 RGB inputs; `forward` returns (logits, hidden features)."""

    def __init__(self, num_outputs: int = 2, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.positions_after_conv = 2 * 2  # 32 →conv5→ 28 →pool→ 14 →conv3→ 12 →pool→ 6 →conv3→ 4 →pool→ 2
        self.fc1 = nn.Linear(128 * self.positions_after_conv, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, num_outputs)
        for layer in (self.conv1, self.conv2, self.conv3, self.fc1, self.fc2, self.fc3):
            default_init(layer, generator)

    @property
    def output(self) -> nn.Linear:
        return self.fc3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h1 = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h2 = F.max_pool2d(F.relu(self.conv2(h1)), 2)
        h3 = F.max_pool2d(F.relu(self.conv3(h2)), 2)
        h4 = F.relu(self.fc1(h3.flatten(1)))  # channel-major: channel c owns columns 4c … 4c+3
        h5 = F.relu(self.fc2(h4))
        return self.fc3(h5), [h1, h2, h3, h4, h5]

    def unit_groups(self) -> list[UnitGroup]:
        return [
            UnitGroup("conv1", self.conv1, self.conv2, "relu"),
            UnitGroup("conv2", self.conv2, self.conv3, "relu"),
            UnitGroup("conv3", self.conv3, self.fc1, "relu", fan_out_per_unit=self.positions_after_conv),
            UnitGroup("fc1", self.fc1, self.fc2, "relu"),
            UnitGroup("fc2", self.fc2, self.fc3, "relu"),
        ]


class LinearNet(UnitNetwork):
    """The linear baseline, 3072 → 2 on the raw pixels: no hidden units, so nothing for CBP to replace."""

    def __init__(self, num_outputs: int = 2, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(IMAGE_SHAPE), num_outputs)
        default_init(self.fc, generator)

    @property
    def output(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.fc(x.flatten(1)), []

    def unit_groups(self) -> list[UnitGroup]:
        return []


NETWORKS: dict[str, type[UnitNetwork]] = {"conv_net": ConvNet, "linear": LinearNet}
