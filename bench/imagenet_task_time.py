"""Time of one continual-ImageNet task at the paper's size, and what a 5,000-task run costs.

Runs the real experiment (`ContinualImageNetExperiment`: the conv net, 1,200 training and 200 test
images per task, mini-batch 100, SGD with momentum 0.9, the algorithm's interventions) on random
uint8 images of the real shape, for a few tasks of `--epochs` epochs each, and prints seconds per
epoch, per 250-epoch task, and the extrapolated hours of a 5,000-task run next to the paper's ~12
A100-hours. The first task is a warm-up (CUDA context, kernel caches) and is not counted. cuDNN runs
with PyTorch's defaults, as in the trials.

`--seeds S` trains S seeds at once in one seed-batched experiment (one Tune trial of
`seeds_per_trial: S`) and reports seconds per task of all S and per seed-task.
`--processes N` runs N copies at once (separate processes, as N trials sharing one GPU with
`resources: {gpu: 1/N}` would), and adds their aggregate throughput: how many trials one GPU holds.

Pure PyTorch: it imports nothing from ray, mlflow or pydantic (checked at the end), so it runs on a
machine that has only torch and numpy.

    python bench/imagenet_task_time.py --device cuda --epochs 10 --tasks 3 [--algorithm cbp] [--seeds 15] [--processes 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without installing it

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lop_ray.algos import CBPConfig  # noqa: E402
from lop_ray.data.shards import ImageDataset  # noqa: E402
from lop_ray.experiments.continual_imagenet import (  # noqa: E402
    ContinualImageNetConfig,
    ContinualImageNetExperiment,
)
from lop_ray.experiments.learner import LearnerSettings  # noqa: E402

PAPER_EPOCHS = 250
PAPER_TASKS = 5000
PAPER_HOURS = 12.0  # A100-hours per 5,000-task run (spec/problems.md §3)
CLASSES = 4  # enough for distinct pairs; a task's size does not depend on it


def synthetic(per_class: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (CLASSES * per_class, 3, 32, 32), dtype=np.uint8)
    return ImageDataset(images, np.repeat(np.arange(CLASSES), per_class), 255.0, CLASSES)


def learner(algorithm: str) -> LearnerSettings:
    """The paper's settings of each algorithm (CBP in the original's conv variant)."""
    if algorithm == "bp":
        return LearnerSettings(step_size=0.01, momentum=0.9)
    if algorithm == "l2":
        return LearnerSettings(algorithm="l2", step_size=0.03, momentum=0.9, weight_decay=3e-6)
    if algorithm == "snp":
        return LearnerSettings(
            algorithm="snp", step_size=0.01, momentum=0.9, weight_decay=1e-5, perturb_scale=1e-5
        )
    cbp = CBPConfig(
        replacement_rate=3e-4,
        maturity_threshold=100,
        util_type="adaptable_contribution",
        accumulate=True,
        bias_correction=False,
        reset_optimizer_state=False,
        replacement_base="width",
        init="default",
    )
    return LearnerSettings(algorithm="cbp", step_size=0.01, momentum=0.9, cbp=cbp)


def time_tasks(
    device: str, algorithm: str, epochs: int, tasks: int, seed: int = 0, seeds: int = 1
) -> list[float]:
    """Seconds of each task (of all `seeds` seeds) after the warm-up one."""
    config = ContinualImageNetConfig(epochs_per_task=epochs, batch_size=100, learner=learner(algorithm))
    batch = [seed * seeds + s for s in range(seeds)]
    experiment = ContinualImageNetExperiment(
        config, batch, synthetic(600, seed), synthetic(100, seed + 1), device
    )
    experiment.run_step()  # warm-up
    seconds = []
    for _ in range(tasks):
        start = time.perf_counter()
        experiment.run_step()  # ends by reading its metrics back: the device has finished the task
        seconds.append(time.perf_counter() - start)
    return seconds


def _worker(args: tuple[str, str, int, int, int, int]) -> list[float]:
    device, algorithm, epochs, tasks, seed, seeds = args
    torch.set_num_threads(1)
    return time_tasks(device, algorithm, epochs, tasks, seed, seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algorithm", choices=("bp", "l2", "snp", "cbp"), default="bp")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed task (the paper: 250)")
    parser.add_argument("--tasks", type=int, default=2, help="timed tasks, after one warm-up task")
    parser.add_argument("--seeds", type=int, default=1, help="seeds batched in one experiment")
    parser.add_argument("--processes", type=int, default=1, help="copies run at once (trials sharing a GPU)")
    args = parser.parse_args(argv)

    name = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {args.device} ({name}); torch {torch.__version__}; algorithm {args.algorithm}")
    print(
        f"per task: 1,200 train / 200 test images, mini-batch 100, {args.epochs} epochs timed × {args.tasks} tasks"
        f", {args.seeds} seed(s) per experiment"
    )
    jobs = [
        (args.device, args.algorithm, args.epochs, args.tasks, seed, args.seeds)
        for seed in range(args.processes)
    ]
    start = time.perf_counter()
    if args.processes == 1:
        results = [time_tasks(*jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            results = pool.map(_worker, jobs)
    wall = time.perf_counter() - start

    per_epoch = float(np.mean([s for seconds in results for s in seconds])) / args.epochs
    per_task = per_epoch * PAPER_EPOCHS
    hours = per_task * PAPER_TASKS / 3600
    runs = args.processes * args.seeds
    print(f"seconds per epoch:            {per_epoch:.4f}   ({args.seeds} seed(s))")
    print(f"seconds per 250-epoch task:   {per_task:.1f}   ({per_task / args.seeds:.1f} per seed-task)")
    print(f"hours per 5,000-task run:     {hours:.1f}   (the paper: ~{PAPER_HOURS:.0f} A100-hours per seed)")
    print(f"runs per day on this device:  {runs * 24 / hours:.2f}  ({runs} at a time; wall {wall:.0f} s)")
    forbidden = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    print(f"imports ray/mlflow/pydantic: {forbidden or 'none'}")
    return 1 if forbidden else 0


if __name__ == "__main__":
    raise SystemExit(main())
