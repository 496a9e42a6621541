"""Continual ImageNet on Ray Tune: one step = one binary task of every seed of the Tune trial."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.continual_imagenet import ContinualImageNetExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable
from lop_ray.trainables.shared_data import shared_dataset


class ContinualImageNetTrainable(LopTrainable):
    def build_experiment(
        self, trials: list[dict[str, Any]], device: torch.device
    ) -> ContinualImageNetExperiment:
        """The trials are seeds of one configuration (`seeds_per_trial`, one for a single seed):
        one experiment trains them all in one network."""
        settings = trials[0]["problem_settings"]
        # one copy of each split per node, in the object store, for every trial there
        train = shared_dataset(settings["dataset"], settings["data"], "train")
        test = shared_dataset(settings["dataset"], settings["data"], "test")
        seeds = [int(trial["seed"]) for trial in trials]
        return ContinualImageNetExperiment(config_from_trial(trials[0]), seeds, train, test, device)
