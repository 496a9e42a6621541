"""Learners on CUDA against the same learners on the CPU: a few tasks of permuted digits
(scikit-learn's 8×8 digits) and of slowly-changing regression, S seeds at once (seed-batched) and
one seed (the single-seed experiments, CBP), printing the largest relative difference of each
per-seed metric and, for CBP, the units each seed replaced on either device.

BP, shrink-and-perturb (counter-based noise) and CBP should differ only by float rounding, amplified
over the steps: CBP draws its new units' weights, and every other draw of its own, from each seed's
CPU generator whatever the learner's device (before, CUDA's generator drew other numbers than the
CPU's from the same seed, and a CUDA run left the CPU run at its first replacement). The replaced
counts should be equal; a unit whose utility ties another's to rounding may still be chosen
differently, rarely.

    python3 bench/cuda_agreement.py
"""

from __future__ import annotations

import sys

import torch

from lop_ray.algos import CBPConfig
from lop_ray.data.shards import ImageDataset, load_dataset
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.permuted_mnist import PermutedMNISTConfig, PermutedMNISTExperiment
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment

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


def compare(label: str, make, steps: int = 3) -> None:
    """Run `make("cpu")` and `make("cuda")` side by side and print how far apart they end up."""
    runs = [make(device) for device in ("cpu", "cuda")]
    results = [[_per_seed(run.run_step()) for _ in range(steps)] for run in runs]
    worst, key = largest_difference(*results)
    line = f"{label:27}: largest relative CPU/CUDA difference {worst:.2e} ({key})"
    if "replaced_units" in results[0][-1][0]:
        cpu, cuda = ([int(seed["replaced_units"]) for seed in result[-1]] for result in results)
        line += f"; replaced units CPU {cpu}, CUDA {cuda}" + (" (equal)" if cpu == cuda else " (DIFFER)")
    print(line, flush=True)


def _per_seed(metrics: list[dict] | dict) -> list[dict]:
    return metrics if isinstance(metrics, list) else [metrics]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    full = load_dataset("digits", None)
    digits = ImageDataset(full.images[:600], full.labels[:600], full.pixel_max, full.num_classes)
    seeds = [0, 1, 2, 3]
    for name, settings in LEARNERS.items():
        config = PermutedMNISTConfig(hidden_units=100, probe_examples=200, learner=settings)
        compare(
            f"permuted digits {name}",
            lambda device: PermutedMNISTExperiment(config, digits, device, seeds),  # noqa: B023
        )
        regression = RegressionConfig(examples_per_step=2000, learner=settings)
        compare(
            f"regression      {name}",
            lambda device: RegressionExperiment(regression, seeds, device),  # noqa: B023
        )
    # one seed (S = 1)
    settings = LEARNERS["cbp"]
    single = PermutedMNISTConfig(seed=2, hidden_units=100, probe_examples=200, learner=settings)
    compare("permuted digits cbp, alone", lambda device: PermutedMNISTExperiment(single, digits, device))
    regression = RegressionConfig(seed=2, examples_per_step=2000, learner=settings)
    compare("regression      cbp, alone", lambda device: RegressionExperiment(regression, device=device))
    leaked = sorted(m for m in ("ray", "mlflow", "pydantic") if m in sys.modules)
    if leaked:
        raise SystemExit(f"imported {leaked}")


if __name__ == "__main__":
    main()
