"""The paper's CIFAR ResNet-18 (spec/networks.md) for S seeds at once, with its 17 unit groups.

torchvision's ResNet-18 is the base: its module tree (stem, four stages of two BasicBlocks, fc) is
kept, with the paper's changes swapped in — a 3×3 stride-1 stem, no max-pool, a bias on every conv —
and an optional base `width` (64 in the paper) so that tests can run a narrow copy.

Seeds: every conv is a grouped convolution over S × C channels (`groups=S`: seed s's channels are the
s-th block of C, its weight the s-th block of the (S·out, in, k, k) weight), every BatchNorm2d runs
over S·C channels (per channel, hence per seed), and the fc is a batched matmul over (S, classes,
512). Nothing in a forward pass mixes seeds, so seed s computes what it computes alone (S = 1), up to
the summation order a grouped kernel may choose (PyTorch's native CPU kernels: bit for bit; oneDNN's:
to rounding). On a CPU, compute-bound, one grouped network runs S seeds at about the speed of S
networks one after another (0.8–1.2× at width 8–16, S ≤ 4); what batching buys is on a device that a
batch of 90 leaves mostly idle (a GPU): one launch sequence for S seeds (bench/seed_batching_cifar.py).

The forward pass walks the same modules as torchvision's, but also returns the features CBP and the
metrics read (spec/algorithms.md, metrics.md): the stem's ReLU, each block's middle ReLU, and each
block's output after the residual add and ReLU — the last block's replaced by the pooled 512-vector.
Conv features stay in the network's layout (batch, S·C, H, W); each unit group's `seed_activations`
views them as (S, batch, C, H, W); the pooled vector is (S, batch, 512) already.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from lop_ray.nets.seed_linear import SeedLinear
from lop_ray.nets.units import SeedView, UnitGroup, UnitNetwork, WeightLayer, norm_entries

PAPER_WIDTH = 64
Generators = Sequence[torch.Generator | None]


class CifarResNet18(UnitNetwork):
    """ResNet-18 for 32×32 images, one copy per generator (S = len(generators)): `forward(x)` takes
    (S, batch, 3, 32, 32) and returns ((S, batch, classes) logits, the 17 groups' features).

    Seed s's initial parameters are drawn from `generators[s]` alone, in the single-seed network's
    order (every conv weight in module order, then the fc weight), so they do not depend on S."""

    def __init__(
        self, num_classes: int = 100, width: int = PAPER_WIDTH, generators: Generators = (None,)
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if len(generators) < 1:
            raise ValueError("at least one generator (one seed) is needed")
        self.seeds = seeds = len(generators)
        with torch.random.fork_rng(devices=[]):  # torchvision's own init draws: thrown away
            base = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
            _seed_grouped(base, width, seeds)
            base.conv1 = _conv(3, width, 3, 1, 1, seeds)
            base.bn1 = nn.BatchNorm2d(seeds * width)
        base.maxpool = nn.Identity()
        base.fc = SeedLinear.zeros(seeds, 8 * width, num_classes)
        self.resnet = base
        self.blocks: list[BasicBlock] = [b for stage in self._stages() for b in stage]
        self.reinitialize(generators)

    def _stages(self) -> list[nn.Sequential]:
        r = self.resnet
        return [r.layer1, r.layer2, r.layer3, r.layer4]

    @property
    def fc(self) -> SeedLinear:
        return self.resnet.fc

    def _generators(self, generators: Generators | None) -> Generators:
        generators = [None] * self.seeds if generators is None else list(generators)
        if len(generators) != self.seeds:
            raise ValueError(f"{len(generators)} generators for a network of {self.seeds} seeds")
        return generators

    @torch.no_grad()
    def reinitialize(self, generators: Generators | None = None) -> None:
        """The paper's initialisation of every layer of every seed: convs Kaiming normal (fan-in, ReLU
        gain), fc Kaiming normal (linear gain), biases 0, BN γ = 1, β = 0. Running statistics are left
        alone (the retrained network of the original keeps them); `reset_norm_statistics` resets them."""
        generators = self._generators(generators)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                per_seed = SeedView.split(module.weight, self.seeds).of()
                for weight, generator in zip(per_seed, generators, strict=True):
                    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.reset_head(generators)

    @torch.no_grad()
    def reset_head(self, generators: Generators | None = None) -> None:
        """Every seed's fc drawn afresh, each from its own generator."""
        for weight, generator in zip(self.fc.weight.detach(), self._generators(generators), strict=True):
            nn.init.kaiming_normal_(weight, nonlinearity="linear", generator=generator)
        nn.init.zeros_(self.fc.bias)

    def reset_norm_statistics(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seeds, batch = x.shape[:2]
        if seeds != self.seeds:
            raise ValueError(f"input holds {seeds} seeds, the network {self.seeds}")
        r = self.resnet
        relu = torch.relu
        # seed-major channels: seed s's images are channels 3s..3s+2 of one (batch, 3S, H, W) tensor
        x = x.transpose(0, 1).reshape(batch, seeds * x.shape[2], *x.shape[3:])
        out = relu(r.bn1(r.conv1(x)))
        features = [out]
        for block in self.blocks:
            middle = relu(block.bn1(block.conv1(out)))
            identity = out if block.downsample is None else block.downsample(out)
            out = relu(block.bn2(block.conv2(middle)) + identity)
            features += [middle, out]
        pooled = torch.flatten(r.avgpool(out), 1).view(batch, seeds, -1).transpose(0, 1)
        features[-1] = pooled
        return self._with_head_correction(self.fc(pooled), [pooled]), features

    def _convs(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        r = self.resnet
        convs = [(r.conv1, r.bn1)]
        for block in self.blocks:
            convs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        return convs

    def unit_groups(self) -> list[UnitGroup]:
        """Stem and the 16 block convs, each with its BN; outgoing weights are the next conv in
        module order (the last conv's: the fc). The 1×1 downsample convs are never touched."""
        seeds = self.seeds
        convs = self._convs()
        per_seed = functools.partial(_seed_channels, seeds)
        groups = []
        for i, (conv, norm) in enumerate(convs):
            last = i + 1 == len(convs)
            nxt = self.fc if last else convs[i + 1][0]
            view = SeedView.whole if last else functools.partial(SeedView.split, seeds=seeds)
            groups.append(
                UnitGroup(
                    name=f"conv{i}",
                    incoming=SeedView.split(conv.weight, seeds),
                    outgoing=view(nxt.weight),
                    activation="relu",
                    incoming_bias=SeedView.split(conv.bias, seeds),
                    outgoing_bias=view(nxt.bias),
                    norm=norm_entries(norm, seeds),
                    seed_activations=_pooled if last else per_seed,
                )
            )
        return groups

    def parameter_views(self) -> list[SeedView]:
        """Every parameter with its seed axis, in `parameters()` order: the fc's already have it,
        a grouped conv's and a BN's hold S consecutive blocks."""
        head = {id(self.fc.weight), id(self.fc.bias)}
        return [
            SeedView.whole(p) if id(p) in head else SeedView.split(p, self.seeds) for p in self.parameters()
        ]

    def weight_layers(self) -> list[WeightLayer]:
        """Every conv with its BN (γ = 1, β = 0, fresh statistics) in module order, the 1×1
        downsample convs included, then the fc: `reinitialize`'s draws, one layer at a time."""
        seeds = self.seeds
        pairs = [(self.resnet.conv1, self.resnet.bn1)]
        for block in self.blocks:
            pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2)]
            if block.downsample is not None:
                pairs.append((block.downsample[0], block.downsample[1]))
        listed = []
        for i, (conv, norm) in enumerate(pairs):
            weight = SeedView.split(conv.weight, seeds)
            listed.append(
                WeightLayer(
                    f"conv{i}",
                    weight,
                    SeedView.split(conv.bias, seeds),
                    functools.partial(_kaiming_draw, weight.shape[1:], "relu"),
                    norm_entries(norm, seeds),
                )
            )
        head = SeedView.whole(self.fc.weight)
        draw = functools.partial(_kaiming_draw, head.shape[1:], "linear")
        listed.append(WeightLayer("output", head, SeedView.whole(self.fc.bias), draw))
        return listed

    def seed_state_views(self) -> dict[str, SeedView]:
        """Every entry of `state_dict()` that belongs to one seed, by name, with its seed axis:
        parameters, BN running means and variances. BN's `num_batches_tracked` counts the batches of
        all seeds alike (and is unused with BN's default momentum), so it is no seed's."""
        views = dict(zip((n for n, _ in self.named_parameters()), self.parameter_views(), strict=True))
        for name, buffer in self.named_buffers():
            if not name.endswith("num_batches_tracked"):
                views[name] = SeedView.split(buffer, self.seeds)
        return views


def _kaiming_draw(
    shape: tuple[int, ...], nonlinearity: str, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One seed's layer as `reinitialize` draws it: Kaiming normal (fan-in), bias 0."""
    weight = torch.empty(shape)
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity=nonlinearity, generator=generator)
    return weight, torch.zeros(shape[0])


def _seed_channels(seeds: int, h: torch.Tensor) -> torch.Tensor:
    """(batch, S·C, H, W) → (S, batch, C, H, W), a view."""
    return h.view(h.shape[0], seeds, -1, *h.shape[2:]).transpose(0, 1)


def _pooled(h: torch.Tensor) -> torch.Tensor:
    return h  # already (S, batch, 512)


def _conv(in_channels: int, out_channels: int, kernel, stride, padding, seeds: int) -> nn.Conv2d:
    """S convs of in → out channels as one grouped conv with a bias: weight (S·out, in, k, k)."""
    return nn.Conv2d(
        seeds * in_channels,
        seeds * out_channels,
        kernel,
        stride=stride,
        padding=padding,
        bias=True,
        groups=seeds,
    )


def _seed_grouped(resnet: ResNet, width: int, seeds: int) -> None:
    """Rebuild every block conv (and downsample conv) as a grouped conv of S seeds with a bias and
    every channel count scaled by width/64, and every BN to match; kernels, strides and paddings
    stay torchvision's."""

    def scaled(channels: int) -> int:
        return channels * width // PAPER_WIDTH

    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            for name, child in list(block.named_modules()):
                parent_name, _, attr = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                if isinstance(child, nn.Conv2d):
                    new = _conv(
                        scaled(child.in_channels),
                        scaled(child.out_channels),
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        seeds,
                    )
                    setattr(parent, attr, new)
                elif isinstance(child, nn.BatchNorm2d):
                    setattr(parent, attr, nn.BatchNorm2d(seeds * scaled(child.num_features)))
