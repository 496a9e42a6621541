"""Seconds per epoch of incremental CIFAR-100 at the paper's size, and the hours a 4,000-epoch run takes.

Runs the real experiment (lop_ray.experiments.incremental_cifar: ResNet-18, batch 90, augmentation,
validation and augmented test passes, the learner and its intervention) on synthetic data of CIFAR-100's
shape — 500 training and 100 test images for each of 100 classes — and times
  * a first-block epoch: 5 classes, 2,250 training + 250 validation + 500 test images;
  * a last-block epoch: 100 classes, 45,000 + 5,000 + 10,000 images (the worst case);
  * one block-end analysis (two 1,000-image probes).
An epoch's cost grows linearly with the classes seen (5, 10, …, 100 over 20 blocks of 200 epochs), so
the mean epoch costs (first + last)/2 and a run costs 4,000 × (first + last)/2 + 21 analyses.
With `--seeds S`, S seeds run at once in one seed-axis network (a trial of `seeds_per_trial: S`): the
times are those of the S-seed epoch, the hours those of one seed (the trial's divided by S).

Imports torch, torchvision and numpy only (no ray, mlflow, pydantic: a bare GPU machine has them not);
checked at the end. Usage:
  python bench/cifar_epoch_time.py --device cuda [--seeds 4]
  python bench/cifar_epoch_time.py --device cpu --fraction 0.02   # 9 training images per class, scaled up
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lop_ray.algos import CBPConfig  # noqa: E402
from lop_ray.data.shards import ImageDataset  # noqa: E402
from lop_ray.experiments.incremental_cifar import IncrementalCifarConfig, IncrementalCifarExperiment  # noqa: E402
from lop_ray.experiments.learner import LearnerSettings  # noqa: E402

PAPER_HOURS = 6.0  # A100-hours per run (spec/problems.md §4)
EPOCHS = 4000
ANALYSES = 21  # the initial network and each of the 20 block ends


def synthetic(
    train_per_class: int, test_per_class: int, classes: int = 100
) -> tuple[ImageDataset, ImageDataset]:
    rng = np.random.default_rng(0)

    def split(per_class: int) -> ImageDataset:
        labels = np.tile(np.arange(classes), per_class)
        images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        return ImageDataset(images, labels, 255.0, classes)

    return split(train_per_class), split(test_per_class)


def learner(algorithm: str) -> LearnerSettings:
    cbp = None
    if algorithm == "cbp":  # the CIFAR variant as the paper's files run it (original)
        cbp = CBPConfig(
            replacement_rate=1e-5,
            maturity_threshold=1000,
            util_type="contribution",
            accumulate=True,
            replacement_base="width",
            utility_average="cumulative",
            init_distribution="normal",
            bias_correction=False,
            reset_optimizer_state=False,
        )
    return LearnerSettings(
        algorithm=algorithm,
        step_size=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        perturb_scale=1e-5 if algorithm == "snp" else 0.0,
        cbp=cbp,
    )


def timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def epoch_at(experiment: IncrementalCifarExperiment, epoch: int, classes: int) -> None:
    """One epoch `epoch` of the run (inside a block, not at its end) with `classes` seen."""
    experiment.steps_done = epoch
    experiment.num_seen = classes
    experiment.run_step()


def measure(experiment: IncrementalCifarExperiment, device: torch.device) -> tuple[float, float, float]:
    """Seconds of a first-block epoch, a last-block epoch and a block-end analysis (two probes)."""
    epoch_at(experiment, 1, 5)  # warm-up: allocator, kernels, cuDNN's choices
    first = timed(device, lambda: epoch_at(experiment, 2, 5))
    last = timed(device, lambda: epoch_at(experiment, 3802, 100))
    experiment.num_seen = 95  # the block end before the last: both probes (the next 5, the 95 seen)
    analysis = timed(device, lambda: experiment._analysis(19))
    return first, last, analysis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--algorithms", default="bp,cbp", help="comma-separated: bp, snp, cbp")
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="of the 450 training, 50 validation and 100 test images per class (CPU: small; times scaled back)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds trained at once (seeds_per_trial)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick conv algorithms")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    train_per_class = max(1, round(450 * args.fraction))
    test_per_class = max(1, round(100 * args.fraction))
    validation_per_class = max(1, round(50 * args.fraction))
    scale = 1.0 / args.fraction
    train, test = synthetic(validation_per_class + train_per_class, test_per_class)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; cudnn.benchmark={args.cudnn_benchmark}")
    print(
        f"images per class: {train_per_class} train + {validation_per_class} validation, {test_per_class} test"
        + (f" (fraction {args.fraction}: epoch times scaled ×{scale:g})" if args.fraction != 1.0 else "")
    )
    for algorithm in args.algorithms.split(","):
        config = IncrementalCifarConfig(validation_per_class=validation_per_class, learner=learner(algorithm))
        seeds = list(range(args.seeds))
        first, last, analysis = measure(
            IncrementalCifarExperiment(config, seeds, train, test, device), device
        )
        first, last = first * scale, last * scale
        run_hours = (EPOCHS * (first + last) / 2 + ANALYSES * analysis) / 3600 / args.seeds
        print(
            f"{algorithm}, {args.seeds} seed(s) at once: first-block epoch {first:.2f} s, last-block epoch"
            f" {last:.2f} s, analysis {analysis:.2f} s; per seed-run ≈ (4000 × ({first:.2f} + {last:.2f}) / 2"
            f" + 21 × {analysis:.2f} s) / {args.seeds} = {run_hours:.2f} h (paper: ~{PAPER_HOURS:g} A100-hours)"
        )
        if device.type == "cuda":
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
            torch.cuda.reset_peak_memory_stats(device)
    heavy = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if heavy:
        print(f"ERROR: imported {heavy}; the GPU machine lacks them")
        return 1
    print("imports: no ray, mlflow or pydantic (checked in sys.modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
