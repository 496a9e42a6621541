"""Learners and interventions, pure PyTorch (no Ray, no MLflow)."""

from lop_ray.algos.backprop import Backprop, Intervention
from lop_ray.algos.cbp import CBPConfig, ContinualBackprop
from lop_ray.algos.optim import Adam, make_optimizer, reset_optimizer_entries
from lop_ray.algos.shrink_perturb import ShrinkAndPerturb

__all__ = [
    "Adam",
    "Backprop",
    "CBPConfig",
    "ContinualBackprop",
    "Intervention",
    "ShrinkAndPerturb",
    "make_optimizer",
    "reset_optimizer_entries",
]
