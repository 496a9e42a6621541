"""Online permuted MNIST on Ray Tune: one step = one task of every seed the trial carries."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.permuted_mnist import PermutedMNISTExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable
from lop_ray.trainables.shared_data import shared_dataset


class PermutedMNISTTrainable(LopTrainable):
    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device):
        settings = trials[0]["problem_settings"]
        dataset = shared_dataset(settings["dataset"], settings["data"])
        config = config_from_trial(trials[0])
        return PermutedMNISTExperiment(config, dataset, device, [trial["seed"] for trial in trials])
