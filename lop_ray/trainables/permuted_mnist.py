"""Online permuted MNIST on Ray Tune: one step = one task (of every seed the trial carries)."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.permuted_mnist import PermutedMNISTExperiment, config_from_trial
from lop_ray.experiments.seed_batched_permuted_mnist import (
    SeedBatchedPermutedMNISTExperiment,
    seed_batchable,
)
from lop_ray.experiments.seed_loop import SeedLoop
from lop_ray.trainables.base import LopTrainable
from lop_ray.trainables.shared_data import shared_dataset


class PermutedMNISTTrainable(LopTrainable):
    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device):
        settings = trials[0]["problem_settings"]
        dataset = shared_dataset(settings["dataset"], settings["data"])
        configs = [config_from_trial(trial) for trial in trials]
        if trials[0]["seeds_per_trial"] > 1 and seed_batchable(configs[0]):
            seeds = [config.seed for config in configs]
            return SeedBatchedPermutedMNISTExperiment(configs[0], seeds, dataset, device)
        if len(configs) > 1:
            return SeedLoop([PermutedMNISTExperiment(config, dataset, device) for config in configs])
        return PermutedMNISTExperiment(configs[0], dataset, device)
