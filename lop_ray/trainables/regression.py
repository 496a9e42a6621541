"""Slowly-changing regression on Ray Tune: one step = one flip period (or `examples_per_step`)."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.regression import RegressionExperiment, config_from_trial
from lop_ray.experiments.seed_batched_regression import SeedBatchedRegressionExperiment
from lop_ray.trainables.base import LopTrainable


class RegressionTrainable(LopTrainable):
    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device):
        config = config_from_trial(trials[0])
        if trials[0]["seeds_per_trial"] > 1:  # seed-batched, even for a group of one: same numbers
            return SeedBatchedRegressionExperiment(config, [trial["seed"] for trial in trials], device)
        return RegressionExperiment(config, device)
