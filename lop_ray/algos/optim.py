"""Optimizers whose per-unit state can be reset.

Continual backprop and ReDo restart the optimizer state of exactly the weights they re-initialise.
For SGD with momentum that is zeroing rows/columns of PyTorch's momentum buffer. Adam needs more:
its bias correction uses a step count, and PyTorch keeps one count per tensor, so a fresh unit inside
an old tensor would get an almost-uncorrected first update. `Adam` here keeps a step count *per
element* and corrects each element by its own count; without resets it computes what PyTorch's Adam
computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

OptimizerName = Literal["sgd", "adam", "adamw"]
_PER_ELEMENT_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "step")


class Adam(torch.optim.Optimizer):
    """Adam/AdamW with per-element step counts.

    `decoupled_weight_decay=False`: L2 added to the gradient (coupled, passes through the moments),
    as the paper's L2 with Adam. `True`: AdamW's decoupled decay.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if weight_decay and group["decoupled_weight_decay"]:
                    param.mul_(1.0 - lr * weight_decay)
                elif weight_decay:
                    grad = grad.add(param, alpha=weight_decay)
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros_like(param)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step.add_(1.0)
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias_correction1 = 1.0 - torch.pow(beta1, step)
                bias_correction2_sqrt = (1.0 - torch.pow(beta2, step)).sqrt()
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                param.addcdiv_(exp_avg / bias_correction1, denom, value=-lr)
        return loss


def make_optimizer(
    params: Iterable[torch.Tensor],
    name: OptimizerName,
    step_size: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The paper's optimizers; L2 is the optimizer's coupled weight decay (decoupled for AdamW)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=step_size, momentum=momentum, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        return Adam(
            params,
            lr=step_size,
            betas=(beta1, beta2),
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=name == "adamw",
        )
    raise ValueError(f"unknown optimizer {name!r}; allowed: sgd, adam, adamw")


def reset_optimizer_entries(optimizer: torch.optim.Optimizer, param: torch.Tensor, index: tuple) -> None:
    """Zero `param[index]`'s momentum buffer, Adam moments and per-element step counts.

    Entries that have no state yet (before the first step) need nothing.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for key in _PER_ELEMENT_STATE:
        tensor = state.get(key)
        if isinstance(tensor, torch.Tensor) and tensor.shape == param.shape:
            tensor[index] = 0
