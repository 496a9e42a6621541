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


class _OnlineNormalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, var, error_y, error_1, forward_decay, backward_decay, eps):
        std = (var + eps).sqrt()
        y = (x - mean) / std
        deviation = x[0] - mean
        var.mul_(forward_decay).add_(forward_decay * (1 - forward_decay) * deviation * deviation)
        mean.mul_(forward_decay).add_((1 - forward_decay) * x[0])
        ctx.save_for_backward(y, std)
        ctx.errors = (error_y, error_1)
        ctx.backward_decay = backward_decay
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, std = ctx.saved_tensors
        error_y, error_1 = ctx.errors
        feedback = 1 - ctx.backward_decay
        corrected = grad_y - feedback * error_y * y
        grad_x = corrected / std - feedback * error_1
        error_y.add_(corrected[0] * y[0])
        error_1.add_(grad_x[0])
        return grad_x, None, None, None, None, None, None, None


class OnlineNorm(nn.Module):
    """Online normalisation of `width` units, for streams of one example per training step."""

    def __init__(
        self,
        width: int,
        forward_decay: float = 0.999,
        backward_decay: float = 0.99,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.forward_decay = forward_decay
        self.backward_decay = backward_decay
        self.eps = eps
        self.affine = True
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))
        self.register_buffer("error_y", torch.zeros(width))
        self.register_buffer("error_1", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if x.shape[0] != 1:
                raise ValueError(
                    f"online normalisation trains on one example per step, got a batch of {len(x)}"
                )
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
            y = (x - self.running_mean) / (self.running_var + self.eps).sqrt()
        return y * self.weight + self.bias

    @torch.no_grad()
    def reset_units(self, units: torch.Tensor) -> None:
        """Fresh statistics, errors and affine entries for replaced units (continual backprop)."""
        self.weight[units] = 1.0
        self.bias[units] = 0.0
        self.running_mean[units] = 0.0
        self.running_var[units] = 1.0
        self.error_y[units] = 0.0
        self.error_1[units] = 0.0
