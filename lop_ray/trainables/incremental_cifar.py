"""Incremental CIFAR-100 on Ray Tune: one step = one epoch of each of the trial's seeds."""

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
        """One experiment for the trial's seeds (one configuration, `seeds_per_trial` of them):
        every seed in one seed-axis ResNet-18, one metric dict per seed."""
        settings = trials[0]["problem_settings"]
        train = shared_dataset(settings["dataset"], settings["data"], "train")
        test = shared_dataset(settings["dataset"], settings["data"], "test")
        seeds = [trial["seed"] for trial in trials]
        return IncrementalCifarExperiment(config_from_trial(trials[0]), seeds, train, test, device)
