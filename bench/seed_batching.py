"""Seed-steps per second: S one-seed learners (S = 1, one seed per trial: the original's way, in our
code) stepped one after another against one S-seed learner, measured side by side in one run.

Slowly-changing regression (20 → 5 → 1, relu, SGD 0.01; one step = one example of every seed): each
measurement is one trainable step of `--examples` examples per seed (default 10,000 = one flip
period, so the stream's per-period generation is counted at its true rate), stream included, as a
sweep runs it. Three columns: S single-seed PyTorch learners one after another (`compiled: False`,
one seed per trial), one S-seed PyTorch learner (`compiled: False`: the seed-batched step with its
compiled one-example pass and CBP statistics), and the compiled kernel that advances all S seeds
through the whole step in one call (`experiments/regression_kernel.py`, what a sweep runs on a CPU).

Online permuted MNIST (784 → 2000 → 2000 → 2000 → 10, relu, SGD 0.003, one example per step): one
task of `--mnist-examples` examples per seed, on random images of MNIST's shape (speed does not
depend on pixel values), probe of `--probe-examples` examples included.

Continual ImageNet and incremental CIFAR-100 (`--problem imagenet cifar`) are measured by
`bench/seed_batching_imagenet.py` and `bench/seed_batching_cifar.py` (their own options there;
here their defaults: a small task / epoch on a CPU, the paper's sizes on CUDA).

The one-after-another rate does not depend on S (each seed runs alone), so it is measured on
min(S, `--alone`) of the S seeds. Imports nothing from Ray, MLflow or pydantic, so it runs on a bare
GPU machine:

    .venv/bin/python bench/seed_batching.py [--problem regression mnist imagenet cifar] [--seeds 1 8 100 1000] [--repeats 3]
    python3 bench/seed_batching.py --problem mnist --device cuda --seeds 1 8 30
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without installing it

import numpy as np
import torch

from lop_ray.algos import CBPConfig
from lop_ray.data.shards import ImageDataset
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment

REGRESSION_LEARNERS = {
    "bp (sgd)": LearnerSettings(step_size=0.01),
    "snp (sgd)": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-2, perturb_scale=1e-4),
    "bp (adam)": LearnerSettings(optimizer="adam", step_size=0.001),
    "cbp (sgd)": LearnerSettings(
        algorithm="cbp",
        step_size=0.01,
        cbp=CBPConfig(replacement_rate=1e-4, maturity_threshold=100, util_type="adaptable_contribution"),
    ),
}
MNIST_LEARNERS = {
    "bp (sgd)": LearnerSettings(step_size=0.003),
    "cbp (sgd)": LearnerSettings(
        algorithm="cbp",
        step_size=0.003,
        cbp=CBPConfig(replacement_rate=1e-4, maturity_threshold=100, util_type="contribution"),
    ),
}


def _rate(run: Callable[[], object], seed_steps: int, device: torch.device) -> float:
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seed_steps / (time.perf_counter() - start)


def regression_rates(
    settings: LearnerSettings, seeds: int, args, device
) -> tuple[float, float, float | None]:
    """(one after another, batched PyTorch learner, compiled kernel); the kernel only on the CPU."""
    n = args.examples
    alone = [
        RegressionExperiment(
            RegressionConfig(seed=s, examples_per_step=n, learner=settings, compiled=False), [s], device
        )
        for s in range(min(seeds, args.alone))
    ]
    one_by_one = _rate(lambda: [e.run_step() for e in alone], len(alone) * n, device)
    config = RegressionConfig(examples_per_step=n, learner=settings, compiled=False)
    batch = RegressionExperiment(config, list(range(seeds)), device)
    together = _rate(batch.run_step, seeds * n, device)
    if device.type != "cpu":
        return one_by_one, together, None
    kernel = RegressionExperiment(dataclasses.replace(config, compiled=True), list(range(seeds)), device)
    assert kernel.compiled is not None
    kernel.run_step()  # its first call compiles (or loads the compiled kernel from numba's cache)
    return one_by_one, together, _rate(kernel.run_step, seeds * n, device)


def mnist_rates(settings: LearnerSettings, seeds: int, args, device) -> tuple[float, float, None]:
    n, dataset = args.mnist_examples, args.dataset

    def config(seed: int) -> PermutedMNISTConfig:
        return PermutedMNISTConfig(
            seed=seed, examples_per_task=n, probe_examples=args.probe_examples, learner=settings
        )

    alone = [PermutedMNISTExperiment(config(s), dataset, device) for s in range(min(seeds, args.alone))]
    one_by_one = _rate(lambda: [e.run_step() for e in alone], len(alone) * n, device)
    batch = PermutedMNISTExperiment(config(0), dataset, device, list(range(seeds)))
    return one_by_one, _rate(batch.run_step, seeds * n, device), None


def _conv_problem(problem: str, args, device: torch.device) -> None:
    """The conv-net problems, through their own benchmarks' `rows` (the S given, at most 16)."""
    seeds = [s for s in args.seeds if s <= 16] or [1, 4]
    if problem == "imagenet":
        from bench import seed_batching_imagenet as imagenet

        print(f"\ncontinual ImageNet ({'a quick task' if device.type == 'cpu' else 'a task'}; seed-steps/s)")
        print(imagenet.format_rows(imagenet.rows(device, seeds, args.repeats), device), flush=True)
        return
    from bench import seed_batching_cifar as cifar

    print(
        f"\nincremental CIFAR-100 ({'a quick epoch' if device.type == 'cpu' else 'an epoch'}; seed-epochs/s)"
    )
    for row in cifar.rows(device, seeds, args.repeats):
        print(
            f"S = {row['seeds']:<3}{row['one_after_another']:>10.3f} one after another{row['batched']:>10.3f} batched"
            f"{row['ratio']:>8.2f}×",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--problem", nargs="+", choices=["regression", "mnist", "imagenet", "cifar"], default=["regression"]
    )
    parser.add_argument("--examples", type=int, default=10_000, help="regression steps per seed")
    parser.add_argument("--mnist-examples", type=int, default=300, help="permuted MNIST steps per seed")
    parser.add_argument("--probe-examples", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8, 100, 1000])
    parser.add_argument("--alone", type=int, default=5, help="seeds measured one after another")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--repeats", type=int, default=1, help="measure each row this many times, keep each column's best"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60_000, 28, 28), dtype=np.uint8)
    args.dataset = ImageDataset(images, rng.integers(0, 10, size=60_000), 255.0, 10)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, CPU threads {args.threads}")
    for problem in args.problem:
        if problem in ("imagenet", "cifar"):
            _conv_problem(problem, args, device)
            continue
        learners, rates, steps = (
            (REGRESSION_LEARNERS, regression_rates, args.examples)
            if problem == "regression"
            else (MNIST_LEARNERS, mnist_rates, args.mnist_examples)
        )
        print(f"\n{problem}: {steps} steps per seed per measurement")
        print(
            f"{'learner':12}{'S':>5}{'one after another':>20}{'batched':>16}{'batched / one-by-one':>22}"
            + (
                f"{'compiled':>16}{'compiled / batched':>20}{'compiled / one-by-one':>23}"
                if problem == "regression"
                else ""
            )
        )
        for learner, settings in learners.items():
            rates(
                settings, 2, argparse.Namespace(**{**vars(args), "examples": 20, "mnist_examples": 5}), device
            )
            for seeds in args.seeds:
                # best of --repeats: a shared VM's noise only ever slows a measurement down
                measured = [rates(settings, seeds, args, device) for _ in range(args.repeats)]
                single, together, torch_ops = (  # torch_ops: the compiled kernel's column
                    max(column) if column[0] is not None else None for column in zip(*measured, strict=True)
                )
                print(
                    f"{learner:12}{seeds:>5}{single:>14,.0f} st/s{together:>12,.0f} st/s"
                    f"{together / single:>21.1f}×"
                    + (
                        f"{torch_ops:>11,.0f} st/s{torch_ops / together:>19.1f}×{torch_ops / single:>22.0f}×"
                        if torch_ops
                        else ""
                    ),
                    flush=True,
                )
    leaked = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if leaked:
        raise SystemExit(f"bench imported {leaked}: it must run where they are not installed")


if __name__ == "__main__":
    main()
