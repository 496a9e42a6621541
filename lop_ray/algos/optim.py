"""Optimizers whose per-unit state can be reset, and which take gradients directly.

Continual backprop and ReDo restart the optimizer state of exactly the weights they re-initialise.
For SGD with momentum that is zeroing rows/columns of the momentum buffer. Adam needs more:
its bias correction uses a step count, and PyTorch keeps one count per tensor, so a fresh unit inside
an old tensor would get an almost-uncorrected first update. `Adam` here keeps a step count *per
element* and corrects each element by its own count; without resets it computes what PyTorch's Adam
computes.

Both take the gradients as a list (`apply_gradients`), so the learner can use `torch.autograd.grad`
and skip `.grad` bookkeeping; `step()` reads `.grad` as usual.

Both also regularise towards the initial weights (`l2_init`, "L2 Init", Kumar et al. 2023,
docs/methods.md): the loss L(θ) + λ‖θ − θ₀‖² adds 2λ(θ − θ₀) to every gradient, beside the coupled
L2 term wd·θ, so the term passes through momentum and Adam's moments as the loss's own gradient
does. θ₀ is each parameter's value when the optimizer is built, kept in its state (so in the
checkpoint) and never reset: units that CBP or ReDo re-initialise keep their original anchor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import torch

OptimizerName = Literal["sgd", "adam", "adamw"]
PER_ELEMENT_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "step", "avg_utility")  # UPGD: its average


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
        l2_init: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            l2_init=l2_init,
        )
        super().__init__(params, defaults)
        _keep_initial_weights(self)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        return _step_from_grad_attributes(self, closure)

    @torch.no_grad()
    def apply_gradients(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One update with `grads` given in the order of the parameters (see `Backprop.learn`).

        Multi-tensor (`torch._foreach_*`) kernels: one call per operation for all parameters.
        """
        for group, params, grads_ in _with_gradients(self.param_groups, grads):
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            if weight_decay and group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1.0 - lr * weight_decay)
            elif weight_decay:
                grads_ = torch._foreach_add(grads_, params, alpha=weight_decay)
            grads_ = _toward_initial(self, group, params, grads_)
            states = [self._state_of(p) for p in params]
            steps = [state["step"] for state in states]
            exp_avgs = [state["exp_avg"] for state in states]
            exp_avg_sqs = [state["exp_avg_sq"] for state in states]
            torch._foreach_add_(steps, 1.0)
            torch._foreach_lerp_(exp_avgs, grads_, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads_, grads_, value=1.0 - beta2)
            bias_correction1 = _bias_correction(beta1, steps)
            bias_correction2_sqrt = _bias_correction(beta2, steps)
            torch._foreach_sqrt_(bias_correction2_sqrt)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, torch._foreach_div(exp_avgs, bias_correction1), denom, value=-lr)

    def _state_of(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if "step" not in state:  # (the L2 Init anchor may be there before the first step)
            state["step"] = torch.zeros_like(param)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        return state


def _bias_correction(beta: float, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    """1 − β^step per element, accurate in the step tensors' dtype.

    `1 − torch.pow(β, step)` in float32 rounds β first (0.999 → 0.99900001) and then cancels: it is
    1.3e-5 too small at step 1, so a fresh element's first update is lr·(1 − 6e-6) rather than lr
    (PyTorch's Adam computes it in float64). −expm1(step·ln β), ln β in float64, does not cancel.
    """
    if beta == 0.0:
        return [torch.ones_like(step) for step in steps]
    corrections = torch._foreach_mul(steps, math.log(beta))
    torch._foreach_expm1_(corrections)
    torch._foreach_neg_(corrections)
    return corrections


class SGD(torch.optim.Optimizer):
    """SGD with optional momentum and coupled weight decay, as PyTorch's (no dampening, no Nesterov).

    Ours rather than `torch.optim.SGD` for `apply_gradients`: on the paper's one-example-per-step
    problems the per-call overhead of PyTorch's optimizer machinery costs more than the update.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        l2_init: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, l2_init=l2_init))
        _keep_initial_weights(self)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        return _step_from_grad_attributes(self, closure)

    def stateless_update(self) -> tuple[float, float] | None:
        """(lr, weight decay) when an update is W ← W − lr·(g + wd·W) for every parameter (one group,
        no momentum): then a network may add its gradient straight into its weights
        (`MLP.fused_sgd_step`) instead of handing it over."""
        group = self.param_groups[0] if len(self.param_groups) == 1 else None
        if group is None or group["momentum"] or group.get("l2_init"):
            return None
        return group["lr"], group["weight_decay"]

    @torch.no_grad()
    def apply_gradients(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One update with `grads` given in the order of the parameters (see `Backprop.learn`)."""
        for group, params, grads_ in _with_gradients(self.param_groups, grads):
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            if weight_decay:
                grads_ = torch._foreach_add(grads_, params, alpha=weight_decay)
            grads_ = _toward_initial(self, group, params, grads_)
            if momentum:
                buffers = [self.state[p].get("momentum_buffer") for p in params]
                if any(b is None for b in buffers):  # first step: the buffer starts as the gradient
                    for param, grad in zip(params, grads_, strict=True):
                        self.state[param]["momentum_buffer"] = grad.clone()
                else:
                    torch._foreach_mul_(buffers, momentum)
                    torch._foreach_add_(buffers, grads_)
                grads_ = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_add_(params, grads_, alpha=-lr)


def _keep_initial_weights(optimizer: torch.optim.Optimizer) -> None:
    """θ₀ of every parameter of a group with L2 Init, in the optimizer's state."""
    for group in optimizer.param_groups:
        if group.get("l2_init"):
            for param in group["params"]:
                optimizer.state[param]["initial"] = param.detach().clone()


def _toward_initial(
    optimizer: torch.optim.Optimizer, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]
) -> list[torch.Tensor]:
    """grads + 2λ(θ − θ₀): the gradient of L2 Init's λ‖θ − θ₀‖² (unchanged without it)."""
    strength = group.get("l2_init", 0.0)  # (groups of checkpoints from before L2 Init lack it)
    if not strength:
        return grads
    offsets = torch._foreach_sub(params, [optimizer.state[p]["initial"] for p in params])
    return torch._foreach_add(grads, offsets, alpha=2.0 * strength)


def _with_gradients(param_groups: list[dict], grads: Sequence[torch.Tensor | None]):
    """(group, params, grads) per parameter group, leaving out parameters without a gradient."""
    grads = iter(grads)
    for group in param_groups:
        pairs = [(p, g) for p, g in zip(group["params"], grads, strict=False) if g is not None]
        if pairs:
            yield group, [p for p, _ in pairs], [g for _, g in pairs]


def _step_from_grad_attributes(optimizer, closure) -> torch.Tensor | None:
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    optimizer.apply_gradients([p.grad for g in optimizer.param_groups for p in g["params"]])
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
    l2_init: float = 0.0,
) -> torch.optim.Optimizer:
    """The paper's optimizers; L2 is the optimizer's coupled weight decay (decoupled for AdamW);
    `l2_init`: L2 Init's λ, towards the parameters' values now."""
    if l2_init < 0:
        raise ValueError(f"l2_init must be >= 0, got {l2_init}")
    if name == "sgd":
        return SGD(params, lr=step_size, momentum=momentum, weight_decay=weight_decay, l2_init=l2_init)
    if name in ("adam", "adamw"):
        return Adam(
            params,
            lr=step_size,
            betas=(beta1, beta2),
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=name == "adamw",
            l2_init=l2_init,
        )
    raise ValueError(f"unknown optimizer {name!r}; allowed: sgd, adam, adamw")


def per_element_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's per-element state tensors of `param` (`PER_ELEMENT_STATE`: momentum, Adam's
    moments and step counts, UPGD's utility), those a restarted unit restarts; none before its first
    step."""
    state = optimizer.state.get(param) or {}
    tensors = (state.get(key) for key in PER_ELEMENT_STATE)
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.shape == param.shape]


def reset_optimizer_entries(optimizer: torch.optim.Optimizer, param: torch.Tensor, index: tuple) -> None:
    """Zero `param[index]`'s momentum buffer, Adam moments and per-element step counts.

    Entries that have no state yet (before the first step) need nothing.
    """
    for tensor in per_element_state(optimizer, param):
        tensor[index] = 0
