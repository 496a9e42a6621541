"""Networks, pure PyTorch. Each exposes its unit groups (see `units.py`)."""

from lop_ray.nets.activations import ACTIVATIONS, init_bound, init_gain
from lop_ray.nets.mlp import MLP
from lop_ray.nets.units import UnitGroup, UnitNetwork

__all__ = ["ACTIVATIONS", "MLP", "UnitGroup", "UnitNetwork", "init_bound", "init_gain"]
