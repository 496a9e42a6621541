"""Incremental CIFAR-100 on Ray Tune: one step = one epoch."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.incremental_cifar import IncrementalCifarExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable
from lop_ray.trainables.shared_data import shared_dataset


class IncrementalCifarTrainable(LopTrainable):
    def build_experiment(
        self, trials: list[dict[str, Any]], device: torch.device
    ) -> IncrementalCifarExperiment:
        [trial] = trials  # one seed per Tune trial
        settings = trial["problem_settings"]
        train = shared_dataset(settings["dataset"], settings["data"], "train")
        test = shared_dataset(settings["dataset"], settings["data"], "test")
        return IncrementalCifarExperiment(config_from_trial(trial), train, test, device)
