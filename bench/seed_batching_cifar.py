"""Seed-epochs per second of incremental CIFAR-100: S single-seed runs one after another against one
S-seed run (one seed-axis ResNet-18: grouped convolutions, per-seed batch norm), measured side by
side in one run.

Each measurement is one first-block epoch (5 classes: training with augmentation, validation, the
augmented test pass; no block end) of the real experiment, on synthetic images of CIFAR-100's shape.
`--quick` (the CPU default) shrinks it to base width 8 and 45 + 5 training and 4 test images per class,
so that it runs in seconds; `--device cuda` without `--quick` is the paper's configuration (width 64,
450 + 50 training and 100 test images per class, batch 90). Imports nothing from Ray, MLflow or
pydantic, so it runs on a bare GPU machine:

    .venv/bin/python bench/seed_batching_cifar.py --quick [--seeds 1 2 4] [--repeats 3]
    python3 bench/seed_batching_cifar.py --device cuda --seeds 1 2 4 8

`rows(device, seeds_list, repeats)` returns the measurements (bench/seed_batching.py prints them with
the other problems').
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.cifar_epoch_time import learner as paper_learner  # noqa: E402
from bench.cifar_epoch_time import synthetic as epoch_time_synthetic  # noqa: E402
from lop_ray.data.shards import ImageDataset  # noqa: E402
from lop_ray.experiments.incremental_cifar import IncrementalCifarConfig, IncrementalCifarExperiment  # noqa: E402

CLASSES = 100
# (width, training incl. validation, validation, test images per class)
QUICK = (8, 50, 5, 4)
PAPER = (64, 500, 50, 100)


def synthetic(train_per_class: int, test_per_class: int) -> tuple[ImageDataset, ImageDataset]:
    """Random images of CIFAR-100's shape, every class equally often (as seed batching needs)."""
    return epoch_time_synthetic(train_per_class, test_per_class, CLASSES)


def _epoch(experiments: Sequence[IncrementalCifarExperiment], device: torch.device) -> float:
    """Seconds of one first-block epoch (the second of the run: no probe) of each experiment."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for experiment in experiments:
        experiment.steps_done = 1
        experiment.run_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def rows(
    device: torch.device | str,
    seeds_list: Sequence[int],
    repeats: int = 1,
    *,
    quick: bool | None = None,
    algorithm: str = "bp",
) -> list[dict[str, float]]:
    """For each S: seed-epochs per second of S single-seed runs one after another and of one S-seed
    run, best of `repeats` each (a shared machine's noise only slows a measurement down), and
    their ratio. `quick` (default: on the CPU) is the narrow, few-image configuration."""
    device = torch.device(device)
    quick = device.type == "cpu" if quick is None else quick
    width, train_per_class, validation_per_class, test_per_class = QUICK if quick else PAPER
    train, test = synthetic(train_per_class, test_per_class)
    config = IncrementalCifarConfig(
        width=width, validation_per_class=validation_per_class, learner=paper_learner(algorithm)
    )
    measured = []
    for seeds in seeds_list:
        alone = [IncrementalCifarExperiment(config, [s], train, test, device) for s in range(seeds)]
        batched = IncrementalCifarExperiment(config, list(range(seeds)), train, test, device)
        _epoch(alone[:1], device), _epoch([batched], device)  # warm-up: allocator, kernels, cuDNN
        one_by_one, together = [], []
        for _ in range(repeats):  # side by side, alternating
            one_by_one.append(_epoch(alone, device))
            together.append(_epoch([batched], device))
        single, batch = seeds / min(one_by_one), seeds / min(together)
        measured.append(
            {"seeds": seeds, "one_after_another": single, "batched": batch, "ratio": batch / single}
        )
        del alone, batched
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="narrow network, few images (the CPU default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--algorithm", default="bp", choices=["bp", "snp", "cbp"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (a trial on one CPU runs one)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    quick = args.quick or device.type == "cpu"
    width, train_per_class, validation_per_class, test_per_class = QUICK if quick else PAPER
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; {args.algorithm}, best of {args.repeats}")
    print(
        f"one first-block epoch (5 classes): width {width}, {train_per_class - validation_per_class} training"
        f" + {validation_per_class} validation and {test_per_class} test images per class"
    )
    print(f"{'S':>3}{'one after another':>22}{'batched':>18}{'batched / one after another':>30}")
    for row in rows(device, args.seeds, args.repeats, quick=quick, algorithm=args.algorithm):
        print(
            f"{row['seeds']:>3}{row['one_after_another']:>14.3f} seed-ep/s{row['batched']:>10.3f} seed-ep/s"
            f"{row['ratio']:>29.2f}×",
            flush=True,
        )
    leaked = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if leaked:
        print(f"ERROR: imported {leaked}; a bare GPU machine lacks them")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
