"""Seed-batched learners on CUDA against the same learners on the CPU: a few tasks of permuted
digits (scikit-learn's 8×8 digits) and of slowly-changing regression, S seeds at once, printing the
largest relative difference of each per-seed metric.

BP and shrink-and-perturb (counter-based noise, device-independent) should differ only by float
rounding, amplified over the steps. CBP differs by design after its first replacement: new units'
weights come from each seed's learner generator on the learner's device, and CUDA's generator
draws other numbers than the CPU's from the same seed.

    python3 bench/cuda_agreement.py
"""

from __future__ import annotations

import sys

import torch

from lop_ray.algos import CBPConfig
from lop_ray.data.shards import ImageDataset, load_dataset
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig
from lop_ray.experiments.regression import RegressionConfig
from lop_ray.experiments.seed_batched_permuted_mnist import SeedBatchedPermutedMNISTExperiment
from lop_ray.experiments.seed_batched_regression import SeedBatchedRegressionExperiment

LEARNERS = {
    "bp": LearnerSettings(step_size=0.01),
    "snp": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-3, perturb_scale=1e-3),
    "cbp": LearnerSettings(
        algorithm="cbp", step_size=0.01, cbp=CBPConfig(replacement_rate=1e-3, maturity_threshold=50)
    ),
}


def largest_difference(cpu: list[list[dict]], cuda: list[list[dict]]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for step_cpu, step_cuda in zip(cpu, cuda, strict=True):
        for seed_cpu, seed_cuda in zip(step_cpu, step_cuda, strict=True):
            for key, value in seed_cpu.items():
                difference = abs(value - seed_cuda[key]) / max(abs(value), 1e-12)
                if difference > worst:
                    worst, where = difference, key
    return worst, where


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    full = load_dataset("digits", None)
    digits = ImageDataset(full.images[:600], full.labels[:600], full.pixel_max, full.num_classes)
    seeds = [0, 1, 2, 3]
    for name, settings in LEARNERS.items():
        config = PermutedMNISTConfig(hidden_units=100, probe_examples=200, learner=settings)
        runs = [
            SeedBatchedPermutedMNISTExperiment(config, seeds, digits, device) for device in ("cpu", "cuda")
        ]
        steps = [[run.run_step() for _ in range(3)] for run in runs]
        worst, key = largest_difference(*steps)
        print(f"permuted digits {name:4}: largest relative CPU/CUDA difference {worst:.2e} ({key})")
        regression = RegressionConfig(examples_per_step=2000, learner=settings)
        runs = [SeedBatchedRegressionExperiment(regression, seeds, device) for device in ("cpu", "cuda")]
        steps = [[run.run_step() for _ in range(3)] for run in runs]
        worst, key = largest_difference(*steps)
        print(f"regression      {name:4}: largest relative CPU/CUDA difference {worst:.2e} ({key})")
    leaked = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if leaked:
        raise SystemExit(f"imported {leaked}")


if __name__ == "__main__":
    main()
