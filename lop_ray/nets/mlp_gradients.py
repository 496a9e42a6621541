"""Hand-written backward pass of an MLP for the two losses the paper uses.

At one example per step (regression, permuted MNIST) the autograd engine's fixed cost per node is
most of a learner step on a small network (docs/performance.md). An MLP's gradients are a few
matrix products, so `MLP.loss_and_gradients` computes them directly; `Backprop` uses it when the
network offers it and falls back to autograd otherwise. tests/test_mlp_gradients.py checks it
against autograd for every activation and both losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

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


def output_gradient(
    output: torch.Tensor, target: torch.Tensor, loss_fn: Callable
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loss, d loss / d output) for mean-reduced MSE or cross-entropy; None for any other loss."""
    if loss_fn is F.mse_loss:
        diff = output - target
        return (diff * diff).mean(), diff * (2.0 / diff.numel())
    if loss_fn is F.cross_entropy and target.dtype == torch.long and target.dim() == 1:
        log_probs = torch.log_softmax(output, dim=1)
        picked = log_probs.gather(1, target[:, None])
        grad = log_probs.exp()
        grad.scatter_add_(1, target[:, None], torch.full_like(picked, -1.0))
        return -picked.mean(), grad / len(target)
    return None


def mlp_loss_and_gradients(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    activation: str,
    act: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
    """Forward and backward of an MLP: (loss, output, hidden activations, gradients).

    `act` is the network's own activation function (its forward pass); `activation` names it, which
    picks the derivative.

    Gradients come in parameter order (weight, bias of each layer). None when the loss or activation
    has no hand-written backward here.
    """
    derivative = DERIVATIVES.get(activation)
    if derivative is None:
        return None
    inputs, pre_activations = [x], []
    h = x
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        z = torch.addmm(bias, h, weight.t())
        h = act(z)
        pre_activations.append(z)
        inputs.append(h)
    output = torch.addmm(biases[-1], h, weights[-1].t())
    loss_and_grad = output_gradient(output, target, loss_fn)
    if loss_and_grad is None:
        return None
    loss, delta = loss_and_grad
    grads: list[torch.Tensor] = []
    for layer in range(len(weights) - 1, -1, -1):
        grads.append(delta.sum(dim=0))
        grads.append(delta.t().mm(inputs[layer]))
        if layer:
            delta = delta.mm(weights[layer]) * derivative(pre_activations[layer - 1], inputs[layer])
    grads.reverse()
    return loss, output, inputs[1:], grads
