"""Online permuted MNIST on Ray Tune: one step = one task."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.permuted_mnist import PermutedMNISTExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable
from lop_ray.trainables.shared_data import shared_dataset


class PermutedMNISTTrainable(LopTrainable):
    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device) -> PermutedMNISTExperiment:
        [trial] = trials  # permuted MNIST is not seed-batched (yet): one seed per Tune trial
        settings = trial["problem_settings"]
        dataset = shared_dataset(settings["dataset"], settings["data"])
        return PermutedMNISTExperiment(config_from_trial(trial), dataset, device)
