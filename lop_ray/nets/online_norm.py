"""Online normalisation (Chiley et al., "Online Normalization for Training Neural Networks", NeurIPS
2019), one of the methods of the paper's Extended Data Fig. 4 that its public code lacks.

Batch normalisation needs a batch; permuted MNIST learns from one example at a time. Online
normalisation normalises each unit with running estimates of its mean and variance, and corrects
the backward pass so that, as in batch normalisation, the gradient reaching the pre-activation
keeps no component along the normalised output and none along the constant:

forward (Eq. 8), per unit:   y_t = (x_t − μ_{t−1}) / σ_{t−1}
                             μ_t = α_f μ_{t−1} + (1 − α_f) x_t
                             σ²_t = α_f σ²_{t−1} + α_f (1 − α_f)(x_t − μ_{t−1})²
backward (Eq. 11, 12):       g_t = ∂y_t − (1 − α_b) ε^y_{t−1} y_t,      ε^y_t = ε^y_{t−1} + g_t y_t
                             ∂x_t = g_t / σ_{t−1} − (1 − α_b) ε^1_{t−1},  ε^1_t = ε^1_{t−1} + ∂x_t

(σ_{t−1}, the scale the forward pass divided by, in both passes; ε is added under the square root.)
A learned per-unit gain and bias follow, as in batch normalisation. Statistics and error
accumulators change only in training mode, one example per step; in eval mode (the probes of the
metrics) the layer normalises with its current estimates and changes nothing. All state is in
buffers, so it is in the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn


def normalize_and_update(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, forward_decay: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8 for x (S, 1, width): (y, σ_{t−1}); the statistics (S, width) are updated in place.
    One function for the autograd path and the MLP's hand-written backward pass: the same numbers."""
    if x.shape[1] != 1:
        raise ValueError(f"online normalisation trains on one example per step, got a batch of {x.shape[1]}")
    std = (var + eps).sqrt()
    y = (x - mean.unsqueeze(1)) / std.unsqueeze(1)
    example = x[:, 0]
    deviation = example - mean
    var.mul_(forward_decay).add_(forward_decay * (1 - forward_decay) * deviation * deviation)
    mean.mul_(forward_decay).add_((1 - forward_decay) * example)
    return y, std


def normalize_backward(
    grad_y: torch.Tensor,
    y: torch.Tensor,
    std: torch.Tensor,
    error_y: torch.Tensor,
    error_1: torch.Tensor,
    backward_decay: float,
) -> torch.Tensor:
    """Eq. 11–12: the gradient reaching x from `grad_y`; the error accumulators updated in place."""
    feedback = 1 - backward_decay
    corrected = grad_y - feedback * error_y.unsqueeze(1) * y
    grad_x = corrected / std.unsqueeze(1) - feedback * error_1.unsqueeze(1)
    error_y.add_(corrected[:, 0] * y[:, 0])
    error_1.add_(grad_x[:, 0])
    return grad_x


class _OnlineNormalize(torch.autograd.Function):
    """x (S, 1, width): one example per seed; statistics and errors (S, width), updated in place."""

    @staticmethod
    def forward(ctx, x, mean, var, error_y, error_1, forward_decay, backward_decay, eps):
        y, std = normalize_and_update(x, mean, var, forward_decay, eps)
        ctx.save_for_backward(y, std)
        ctx.errors = (error_y, error_1)
        ctx.backward_decay = backward_decay
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, std = ctx.saved_tensors
        grad_x = normalize_backward(grad_y, y, std, *ctx.errors, ctx.backward_decay)
        return grad_x, None, None, None, None, None, None, None


class OnlineNorm(nn.Module):
    """Online normalisation of `width` units of each of `seeds` seeds, for streams of one example
    per training step; inputs (S, 1, width), every tensor (S, width)."""

    def __init__(
        self,
        width: int,
        seeds: int = 1,
        forward_decay: float = 0.999,
        backward_decay: float = 0.99,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.forward_decay = forward_decay
        self.backward_decay = backward_decay
        self.eps = eps
        self.affine = True
        shape = (seeds, width)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("error_y", torch.zeros(shape))
        self.register_buffer("error_1", torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = _OnlineNormalize.apply(
                x,
                self.running_mean,
                self.running_var,
                self.error_y,
                self.error_1,
                self.forward_decay,
                self.backward_decay,
                self.eps,
            )
        else:
            y = (x - self.running_mean.unsqueeze(1)) / (self.running_var + self.eps).sqrt().unsqueeze(1)
        return y * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)

    def train_forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training mode's (normalised x, σ) for a hand-written backward pass (`MLP`); the caller
        applies the gain and bias and later calls `backward_parts`. Updates the statistics."""
        return normalize_and_update(x, self.running_mean, self.running_var, self.forward_decay, self.eps)

    def backward_parts(self, grad_y: torch.Tensor, y: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The gradient reaching the layer's input from the one reaching its normalised output."""
        return normalize_backward(grad_y, y, std, self.error_y, self.error_1, self.backward_decay)

    def unit_entries(self) -> dict[str, float]:
        """The per-unit tensors a fresh unit restarts, and their values (continual backprop): its
        statistics, error accumulators and affine entries (`lop_ray.nets.units.norm_entries`)."""
        return {
            "weight": 1.0,
            "bias": 0.0,
            "running_mean": 0.0,
            "running_var": 1.0,
            "error_y": 0.0,
            "error_1": 0.0,
        }
