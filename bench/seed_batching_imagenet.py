"""Continual ImageNet, seed-steps per second: S seeds batched in one network against S runs of one
seed one after another, measured side by side in one run (issue 14).

Each measurement is one task of the real experiment (`ContinualImageNetExperiment`: the conv net,
SGD with momentum 0.9, the algorithm's interventions, mini-batches of 100) after one warm-up task,
on random uint8 images of the real shape (speed does not depend on pixel values). A third column
runs the batched network with its other convolution layout (`ConvNet.grouped`: one grouped call
where the default loops over seeds, on a CPU; the loop where the default is grouped, on CUDA), so
the choice of layout is measured where it is made.

The one-after-another rate does not depend on S (each seed runs alone), so it is measured on
min(S, `--alone`) of the S seeds. `--quick` shrinks a task to 200 training images and 2 epochs (4
steps) for a CPU; without it a task has the paper's 1,200 images and `--epochs` epochs. Imports
nothing from Ray, MLflow or pydantic, so it runs on a bare GPU machine:

    .venv/bin/python bench/seed_batching_imagenet.py --quick [--seeds 1 4 8 16] [--repeats 2]
    python3 bench/seed_batching_imagenet.py --device cuda --seeds 1 4 16 --epochs 5

`rows(device, seeds_list, repeats)` gives the same measurements as data (bench/seed_batching.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, without installing it

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.imagenet_task_time import learner as paper_learner  # noqa: E402
from lop_ray.data.shards import ImageDataset  # noqa: E402
from lop_ray.experiments.continual_imagenet import (  # noqa: E402
    ContinualImageNetConfig,
    ContinualImageNetExperiment,
)
from lop_ray.experiments.learner import LearnerSettings  # noqa: E402

CLASSES = 4  # enough for distinct pairs; a task's size does not depend on it
PAPER_EPOCHS = 250

# the paper's settings of each algorithm (bench/imagenet_task_time.py), and the linear baseline
LEARNERS: dict[str, tuple[str, LearnerSettings]] = {
    **{name: ("conv_net", paper_learner(name)) for name in ("bp", "l2", "snp", "cbp")},
    "linear": ("linear", LearnerSettings(step_size=1e-5, momentum=0.9)),
}


@dataclass(frozen=True)
class Row:
    """One learner at one S: rates in seed-steps per second (a step = one mini-batch of every seed)."""

    learner: str
    seeds: int
    one_by_one: float
    batched: float
    other_layout: float | None  # the batched network with its other convolution layout
    seconds_per_task: float  # of the batched experiment, all S seeds, one task as configured
    steps_per_task: int

    @property
    def ratio(self) -> float:
        return self.batched / self.one_by_one


def synthetic(per_class: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (CLASSES * per_class, 3, 32, 32), dtype=np.uint8)
    return ImageDataset(images, np.repeat(np.arange(CLASSES), per_class), 255.0, CLASSES)


def _task_seconds(experiment: ContinualImageNetExperiment) -> float:
    """One task after a warm-up one; run_step ends by reading its metrics: the device is done."""
    experiment.run_step()
    start = time.perf_counter()
    experiment.run_step()
    return time.perf_counter() - start


def measure(
    learner: str,
    seeds: int,
    device: torch.device,
    quick: bool,
    epochs: int,
    alone: int,
    data: tuple[ImageDataset, ImageDataset],
) -> Row:
    network, settings = LEARNERS[learner]
    config = ContinualImageNetConfig(
        network=network,
        epochs_per_task=2 if quick else epochs,
        batch_size=100,
        train_images_per_class=100 if quick else None,
        learner=settings,
    )
    per_class = config.train_images_per_class or len(data[0].labels) // CLASSES
    steps = config.epochs_per_task * -(-2 * per_class // config.batch_size)
    singles = [ContinualImageNetExperiment(config, [s], *data, device) for s in range(min(seeds, alone))]
    one_by_one = len(singles) * steps / sum(_task_seconds(e) for e in singles)
    batch = ContinualImageNetExperiment(config, list(range(seeds)), *data, device)
    seconds = _task_seconds(batch)
    other = None
    if network == "conv_net":
        flipped = ContinualImageNetExperiment(config, list(range(seeds)), *data, device)
        flipped.net.grouped = device.type != "cuda"  # the layout the default does not take here
        other = seeds * steps / _task_seconds(flipped)
    return Row(learner, seeds, one_by_one, seeds * steps / seconds, other, seconds, steps)


def rows(
    device: str | torch.device,
    seeds_list: Sequence[int],
    repeats: int = 1,
    learners: Sequence[str] = ("bp", "cbp"),
    quick: bool | None = None,
    epochs: int = 5,
    alone: int = 4,
) -> list[Row]:
    """Every learner at every S, each column the best of `repeats` measurements (a shared machine's
    noise only ever slows a measurement down). `quick` defaults to True on a CPU."""
    device = torch.device(device)
    quick = device.type == "cpu" if quick is None else quick
    per_class = 100 if quick else 600
    data = (synthetic(per_class, 0), synthetic(100, 1))
    measured = []
    for learner in learners:
        for seeds in seeds_list:
            tries = [measure(learner, seeds, device, quick, epochs, alone, data) for _ in range(repeats)]
            others = [t.other_layout for t in tries if t.other_layout is not None]
            measured.append(
                Row(
                    learner,
                    seeds,
                    max(t.one_by_one for t in tries),
                    max(t.batched for t in tries),
                    max(others) if others else None,
                    min(t.seconds_per_task for t in tries),
                    tries[0].steps_per_task,
                )
            )
    return measured


def format_rows(measured: Sequence[Row], device: torch.device) -> str:
    other = "grouped conv" if device.type != "cuda" else "conv loop"
    lines = [
        f"{'learner':8}{'S':>4}{'one after another':>20}{'batched':>16}{'ratio':>8}"
        f"{'batched, ' + other:>24}{'s / task (S seeds)':>20}"
    ]
    for row in measured:
        other_rate = f"{row.other_layout:>12,.1f} st/s" if row.other_layout is not None else f"{'-':>17}"
        lines.append(
            f"{row.learner:8}{row.seeds:>4}{row.one_by_one:>14,.1f} st/s{row.batched:>11,.1f} st/s"
            f"{row.ratio:>7.2f}×{other_rate:>24}{row.seconds_per_task:>14.2f} ({row.steps_per_task} steps)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="200 training images, 2 epochs per task")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--learners", nargs="+", choices=sorted(LEARNERS), default=["bp", "cbp"])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per task without --quick")
    parser.add_argument("--alone", type=int, default=4, help="seeds measured one after another")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="keep each column's best of this many")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    size = "quick: 200 images × 2 epochs" if args.quick else f"1,200 images × {args.epochs} epochs"
    print(f"device {device} ({name}), torch {torch.__version__}; a task of {size}, mini-batch 100")
    measured = rows(device, args.seeds, args.repeats, args.learners, args.quick, args.epochs, args.alone)
    print(format_rows(measured, device))
    for row in measured:
        if row.learner == "bp":
            per_seed_task = PAPER_EPOCHS * 12 / (row.batched)  # 12 steps per epoch at the paper's size
            print(
                f"S={row.seeds:<3} one 250-epoch paper task per seed, batched: ~{per_seed_task:.1f} s of device time"
            )
    leaked = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if leaked:
        print(f"bench imported {leaked}: it must run where they are not installed")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
