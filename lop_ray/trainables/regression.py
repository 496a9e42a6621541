"""Slowly-changing regression on Ray Tune: one step = one flip period (or `examples_per_step`) of
every seed the trial carries."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.regression import RegressionExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable


class RegressionTrainable(LopTrainable):
    def build_experiment(self, trials: list[dict[str, Any]], device: torch.device):
        config = config_from_trial(trials[0])
        return RegressionExperiment(config, [trial["seed"] for trial in trials], device)
