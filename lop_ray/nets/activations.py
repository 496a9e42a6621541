"""The activations the paper uses, and the initialisation gain each one gets.

The paper's code picks an init gain per activation with a few house rules: swish and elu reuse
relu's gain, leaky_relu is initialised as if its negative slope were 0 (relu's gain), and selu is
left to PyTorch's default initialisation. Keeping the rules in one table stops the network's init and
CBP's re-init from drifting apart.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "swish": nn.SiLU,
    "selu": nn.SELU,
}

_GAIN_OF = {"swish": "relu", "elu": "relu", "leaky_relu": "relu"}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None


def init_gain(activation: str) -> float:
    """`torch.nn.init.calculate_gain` under the paper's rules (see module docstring)."""
    if activation == "selu":
        return 1.0  # selu is initialised lecun-style: bound sqrt(3 / fan_in)
    return nn.init.calculate_gain(_GAIN_OF.get(activation, activation))


INIT_SCHEMES = ("kaiming", "xavier", "lecun", "default")


def init_bound(scheme: str, activation: str, fan_in: int, fan_out: int) -> float:
    """Half-width B of the uniform U(-B, B) that new incoming weights of a unit are drawn from."""
    if scheme == "kaiming":
        return init_gain(activation) * math.sqrt(3.0 / fan_in)
    if scheme == "xavier":
        return init_gain(activation) * math.sqrt(6.0 / (fan_in + fan_out))
    if scheme == "lecun":
        return math.sqrt(3.0 / fan_in)
    if scheme == "default":
        return math.sqrt(1.0 / fan_in)
    raise ValueError(f"unknown init scheme {scheme!r}; allowed: {list(INIT_SCHEMES)}")


def crelu(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """CReLU (Shang et al. 2016; against plasticity loss: Abbas et al. 2023): each unit's ReLU(z) and
    ReLU(−z), interleaved along `dim` (a linear layer's units, a conv layer's channels), so that a
    unit's two outputs are adjacent inputs of the next layer and it always passes a gradient (one of
    the two is active unless z = 0)."""
    dim = dim % z.dim()
    return torch.stack((F.relu(z), F.relu(-z)), dim=dim + 1).flatten(dim, dim + 1)


def crelu_units(h: torch.Tensor) -> torch.Tensor:
    """Seed-first CReLU outputs (S, batch, 2·width, *positions) as (S, batch, width, 2, *positions):
    a unit with its two outputs (what CBP, ReDo and SNR score a unit by)."""
    return h.unflatten(2, (h.shape[2] // 2, 2))
