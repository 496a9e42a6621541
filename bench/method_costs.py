"""Each method's cost per learner step on every problem's network, measured side by side in one run,
as a ratio to plain backprop on the same network and data.

One learner step = forward, loss, backward, optimizer step and the method's interventions
(`Backprop.learn`) on synthetic inputs of the problem's shape, at the problem's batch size:

    regression        20 → 5 → 1 MLP, 100 seeds in one network, 1 example per step
    permuted MNIST    784 → 100 → 100 → 100 → 10 MLP (`--mnist-width`), 1 example per step
    ImageNet          the conv net, 1 seed, mini-batches of 100 32×32 images
    CIFAR-100         ResNet-18 at base width 8 (`--cifar-width`; the paper's is 64), batches of 90

Methods run at their defaults (`lop_ray.experiments.learner`); the reset methods' periodic work is
amortised over `--steps` steps (layer resets every 100 steps here, so that it is in the window);
plasticity injection injects once at the warm-up step, so the window is its steady cost, with a
one-layer head (`injection`) and a two-layer one (`injection_h2`; `-` where the network's plain
head is one layer). `layer_norm` and `crelu` are the network options, with plain backprop.
Samples of every method are interleaved, so load changes hit them alike; the median is reported.

    .venv/bin/python bench/method_costs.py [--problems regression mnist imagenet cifar] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lop_ray.algos import CBPConfig  # noqa: E402
from lop_ray.algos.injection import InjectionConfig  # noqa: E402
from lop_ray.algos.layer_reset import LayerResetConfig  # noqa: E402
from lop_ray.algos.parseval import ParsevalConfig  # noqa: E402
from lop_ray.algos.redo import ReDoConfig  # noqa: E402
from lop_ray.algos.snr import SNRConfig  # noqa: E402
from lop_ray.algos.upgd import UPGDConfig  # noqa: E402
from lop_ray.data.seeding import LEARNER, generator  # noqa: E402
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp  # noqa: E402
from lop_ray.nets.conv_net import ConvNet  # noqa: E402
from lop_ray.nets.losses import per_seed_cross_entropy, per_seed_mse  # noqa: E402
from lop_ray.nets.resnet import CifarResNet18  # noqa: E402

METHODS: dict[str, dict] = {
    "bp": {},
    "l2": {"algorithm": "l2", "weight_decay": 1e-4},
    "l2_init": {"algorithm": "l2_init", "l2_init": 1e-3},
    "snp": {"algorithm": "snp", "weight_decay": 1e-4, "perturb_scale": 1e-4},
    "cbp": {"algorithm": "cbp", "cbp": CBPConfig(replacement_rate=1e-4, maturity_threshold=100)},
    "redo": {"algorithm": "redo", "method": ReDoConfig(reset_period=100, init="default")},
    "layer_reset": {"algorithm": "layer_reset", "method": LayerResetConfig(reset_period=100)},
    "parseval": {"algorithm": "parseval", "method": ParsevalConfig()},
    "upgd": {"algorithm": "upgd", "optimizer": "upgd", "upgd": UPGDConfig()},
    "snr": {"algorithm": "snr", "method": SNRConfig(init="default")},
    # injected at the warm-up step, so that every measured step runs with the frozen heads
    "injection": {"algorithm": "plasticity_injection", "method": InjectionConfig(1, max_injections=1)},
    "injection_h2": {
        "algorithm": "plasticity_injection",
        "method": InjectionConfig(1, head_layers=2, max_injections=1),
    },
    # network options (MLPs and the conv net; `-` on ResNet-18, which has neither)
    "layer_norm": {"network": {"layer_norm": True}},
    "crelu": {"network": {"crelu": True}},
}


def _generators(seeds: int) -> list[torch.Generator]:
    return [generator(seed, LEARNER, 0) for seed in range(seeds)]


def problems(mnist_width: int, cifar_width: int) -> dict[str, tuple[Callable, Callable, Callable, int]]:
    """name → (network factory, batch factory (step → x, y), loss, seeds)."""

    def regression_batch(step: int):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 2, (100, 1, 20), generator=g).float()
        return x, x.sum(dim=2, keepdim=True)

    def mnist_batch(step: int):
        g = torch.Generator().manual_seed(step)
        return torch.rand(1, 1, 784, generator=g), torch.randint(0, 10, (1, 1), generator=g)

    def image_batch(size: int, classes: int):
        def batch(step: int):
            g = torch.Generator().manual_seed(step)
            return torch.randn(1, size, 3, 32, 32, generator=g), torch.randint(
                0, classes, (1, size), generator=g
            )

        return batch

    return {
        "regression": (
            lambda **options: initial_mlp([20, 5, 1], "relu", range(100), **options),
            regression_batch,
            per_seed_mse,
            100,
        ),
        "mnist": (
            lambda **options: initial_mlp(
                [784, mnist_width, mnist_width, mnist_width, 10], "relu", [0], **options
            ),
            mnist_batch,
            per_seed_cross_entropy,
            1,
        ),
        "imagenet": (
            lambda **options: ConvNet(2, generators=_generators(1), **options),
            image_batch(100, 2),
            per_seed_cross_entropy,
            1,
        ),
        "cifar": (
            lambda **options: CifarResNet18(100, cifar_width, _generators(1), **options),
            image_batch(90, 100),
            per_seed_cross_entropy,
            1,
        ),
    }


def measure(problem: tuple, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per learner step of every method on one problem."""
    make_net, make_batch, loss_fn, seeds = problem
    batches = [make_batch(step) for step in range(steps)]
    learners = {}
    for name, settings in METHODS.items():
        settings = dict(settings)
        try:
            net = make_net(**settings.pop("network", {}))
            learner, _ = build_learner(
                net, LearnerSettings(**{"step_size": 0.01, **settings}), range(seeds), "cpu", loss_fn
            )
        except (ValueError, TypeError) as error:  # a method or option this network does not take
            print(f"{name} on this network: {error}", file=sys.stderr)
            continue
        learner.learn(*batches[0])  # warm up (lazy state, first-call dispatch)
        learners[name] = learner
    samples: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            for x, y in batches:
                learner.learn(x, y)
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["regression", "mnist", "imagenet", "cifar"])
    parser.add_argument(
        "--steps", type=int, default=200, help="learner steps per sample (image problems: /10)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist-width", type=int, default=100)
    parser.add_argument("--cifar-width", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = problems(args.mnist_width, args.cifar_width)
    results = {}
    for name in args.problems:
        steps = args.steps if name in ("regression", "mnist") else max(1, args.steps // 10)
        print(
            f"measuring {name}: {len(METHODS)} methods × {args.repeats} × {steps} steps …",
            file=sys.stderr,
            flush=True,
        )
        results[name] = measure(table[name], steps, args.repeats)
    print(f"{'method':12s}" + "".join(f" {p:>20s}" for p in results))
    print(f"{'':12s}" + "".join(f" {'ms/step  × bp':>20s}" for _ in results))
    for method in METHODS:
        cells = []
        for times in results.values():
            if method not in times:
                cells.append(f" {'-':>9s} {'-':>10s}")
                continue
            cells.append(f" {times[method] * 1e3:9.3f} {times[method] / times['bp']:9.2f}x")
        print(f"{method:12s}" + "".join(cells))


if __name__ == "__main__":
    main()
