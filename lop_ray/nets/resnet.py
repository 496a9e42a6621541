"""The paper's CIFAR ResNet-18 (spec/networks.md) with its 17 replaceable unit groups.

torchvision's ResNet-18 is the base: its module tree (stem, four stages of two BasicBlocks, fc) is
kept, with the paper's changes swapped in — a 3×3 stride-1 stem, no max-pool, a bias on every conv —
and an optional base `width` (64 in the paper) so that tests can run a narrow copy. The forward pass
walks the same modules as torchvision's, but also returns the features CBP and the metrics read
(spec/algorithms.md, metrics.md): the stem's ReLU, each block's middle ReLU, and each block's output
after the residual add and ReLU — the last block's replaced by the pooled 512-vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, ResNet

from lop_ray.nets.units import UnitGroup, UnitNetwork

PAPER_WIDTH = 64


class CifarResNet18(UnitNetwork):
    """ResNet-18 for 32×32 images; `forward(x)` returns (logits, the 17 groups' features)."""

    def __init__(
        self, num_classes: int = 100, width: int = PAPER_WIDTH, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        base = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        _with_biases_and_width(base, width)
        base.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=True)
        base.maxpool = nn.Identity()
        base.fc = nn.Linear(8 * width, num_classes)
        self.resnet = base
        self.blocks: list[BasicBlock] = [b for stage in self._stages() for b in stage]
        self.reinitialize(generator)

    def _stages(self) -> list[nn.Sequential]:
        r = self.resnet
        return [r.layer1, r.layer2, r.layer3, r.layer4]

    @property
    def fc(self) -> nn.Linear:
        return self.resnet.fc

    @torch.no_grad()
    def reinitialize(self, generator: torch.Generator | None = None) -> None:
        """The paper's initialisation of every layer: convs Kaiming normal (fan-in, ReLU gain), fc
        Kaiming normal (linear gain), biases 0, BN γ = 1, β = 0. Running statistics are left alone
        (the retrained network of the original keeps them); `reset_norm_statistics` resets them."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_in", nonlinearity="relu", generator=generator
                )
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.reset_head(generator)

    @torch.no_grad()
    def reset_head(self, generator: torch.Generator | None = None) -> None:
        nn.init.kaiming_normal_(self.fc.weight, nonlinearity="linear", generator=generator)
        nn.init.zeros_(self.fc.bias)

    def reset_norm_statistics(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        r = self.resnet
        out = F.relu(r.bn1(r.conv1(x)))
        features = [out]
        for block in self.blocks:
            middle = F.relu(block.bn1(block.conv1(out)))
            identity = out if block.downsample is None else block.downsample(out)
            out = F.relu(block.bn2(block.conv2(middle)) + identity)
            features += [middle, out]
        pooled = torch.flatten(r.avgpool(out), 1)
        features[-1] = pooled
        return r.fc(pooled), features

    def unit_groups(self) -> list[UnitGroup]:
        """Stem and the 16 block convs, each with its BN; outgoing weights are the next conv in
        module order (the last conv's: the fc). The 1×1 downsample convs are never touched."""
        r = self.resnet
        convs = [(r.conv1, r.bn1)]
        for block in self.blocks:
            convs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        outgoing = [conv for conv, _ in convs[1:]] + [r.fc]
        return [
            UnitGroup(name=f"conv{i}", incoming=conv, outgoing=nxt, activation="relu", norm=norm)
            for i, ((conv, norm), nxt) in enumerate(zip(convs, outgoing, strict=True))
        ]


def _with_biases_and_width(resnet: ResNet, width: int) -> None:
    """Rebuild every block conv (and downsample conv) with a bias and every channel count scaled by
    width/64, and every BN to match; shapes, strides and paddings stay torchvision's."""

    def scaled(channels: int) -> int:
        return channels * width // PAPER_WIDTH

    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            for name, child in list(block.named_modules()):
                parent_name, _, attr = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                if isinstance(child, nn.Conv2d):
                    new = nn.Conv2d(
                        scaled(child.in_channels),
                        scaled(child.out_channels),
                        child.kernel_size,
                        stride=child.stride,
                        padding=child.padding,
                        bias=True,
                    )
                    setattr(parent, attr, new)
                elif isinstance(child, nn.BatchNorm2d):
                    setattr(parent, attr, nn.BatchNorm2d(scaled(child.num_features)))
    resnet.bn1 = nn.BatchNorm2d(width)
