"""Slowly-changing regression on Ray Tune: one step = one flip period (or `examples_per_step`)."""

from __future__ import annotations

from typing import Any

import torch

from lop_ray.experiments.regression import RegressionExperiment, config_from_trial
from lop_ray.trainables.base import LopTrainable


class RegressionTrainable(LopTrainable):
    def build_experiment(self, trial: dict[str, Any], device: torch.device) -> RegressionExperiment:
        return RegressionExperiment(config_from_trial(trial), device)
