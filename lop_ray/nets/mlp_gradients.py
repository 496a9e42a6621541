"""The activations' derivatives for the MLP's hand-written backward pass (`lop_ray.nets.mlp`).

At one example per step (regression, permuted MNIST) the autograd engine's fixed cost per node is
most of a learner step on a small network (docs/performance.md). An MLP's gradients are a few
matrix products, so `MLP.loss_and_gradients` computes them directly; `Backprop` uses it when the
network offers it and falls back to autograd otherwise. tests/test_mlp_gradients.py checks it
against autograd for every activation and both losses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805

# d activation / d pre-activation, from the pre-activation z and the activation a
DERIVATIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "relu": lambda z, a: a > 0,  # multiplied in as a mask: no float copy of it is made
    "tanh": lambda z, a: 1.0 - a * a,
    "sigmoid": lambda z, a: a * (1.0 - a),
    "elu": lambda z, a: torch.where(z > 0, 1.0, a + 1.0),
    "leaky_relu": lambda z, a: torch.where(z > 0, 1.0, 0.01),
    "swish": lambda z, a: (s := torch.sigmoid(z)) * (1.0 + z * (1.0 - s)),
    "selu": lambda z, a: torch.where(z > 0, _SELU_SCALE, a + _SELU_SCALE * _SELU_ALPHA),
}
