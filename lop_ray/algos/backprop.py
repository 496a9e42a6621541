"""The Backprop learner: forward, loss, backward, optimizer step, then the interventions.

Interventions (continual backprop, ReDo, shrink-and-perturb) attach after the optimizer step, in the
order given, and see the hidden activations of the same forward pass; the learner does not know which
ones it runs (spec/algorithms.md: CBP / ReDo, then shrink-and-perturb). An intervention that also has
`add_gradient(params, grads)` (a regulariser: Parseval) adds its term to the loss gradient before the
step; a step whose SGD update would be fused into the backward pass is then not fused.

A network may carry S seeds (parameters with a leading seed axis, `lop_ray.nets.units`); its loss
function then returns one loss per seed, (S,), and the gradient is that of their sum: seeds share no
parameter, so each seed's gradient is its own loss's alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from lop_ray.nets.losses import per_seed_cross_entropy, per_seed_mse
from lop_ray.nets.units import UnitNetwork

__all__ = ["Backprop", "Intervention", "per_seed_cross_entropy", "per_seed_mse"]


class Intervention(Protocol):
    """Something applied to the network after every optimizer step."""

    def after_step(self, activations: Sequence[torch.Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Backprop:
    """Plain backprop plus any interventions; L2 is the optimizer's weight decay."""

    def __init__(
        self,
        net: UnitNetwork,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        interventions: Sequence[Intervention] = (),
    ) -> None:
        self.net = net
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.interventions = list(interventions)
        # gradients come back in this order, the optimizer's own, so they can be handed over as a list
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        # a network may compute its gradients by hand (MLPs: no autograd overhead per step) when the
        # optimizer holds exactly its parameters, in the same order
        same_order = len(self._params) == len(list(net.parameters())) and all(
            a is b for a, b in zip(self._params, net.parameters(), strict=False)
        )
        self._hand_gradients = getattr(net, "loss_and_gradients", None) if same_order else None
        self._gradient_terms = [i.add_gradient for i in self.interventions if hasattr(i, "add_gradient")]
        # a stateless SGD update may be fused into the backward pass (large seed-batched layers)
        stateless = getattr(optimizer, "stateless_update", None)
        fused = getattr(net, "fused_sgd_step", None)
        fusable = same_order and fused and stateless and not self._gradient_terms
        self._fused_sgd = (fused, stateless) if fusable else None

    def learn(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on (x, y). Returns the loss and output of the forward pass *before* the update."""
        if self._fused_sgd is not None and (update := self._fused_sgd[1]()) is not None:
            fused = self._fused_sgd[0](x, y, self.loss_fn, *update)
            if fused is not None:
                loss, output, activations = fused
                self._intervene(activations)
                return loss, output
        computed = self._hand_gradients(x, y, self.loss_fn) if self._hand_gradients else None
        if computed is None:
            output, activations = self.net(x)
            loss = self.loss_fn(output, y)
            total = loss.sum() if loss.dim() else loss  # per-seed losses: the sum's gradient
            grads = torch.autograd.grad(total, self._params, allow_unused=True)
            loss, output = loss.detach(), output.detach()
            activations = [h.detach() for h in activations]
        else:  # computed under no_grad: nothing to detach (each detach is a dispatch per step)
            loss, output, activations, grads = computed
        if self._gradient_terms:
            grads = list(grads)
            for add_gradient in self._gradient_terms:
                add_gradient(self._params, grads)
        self._apply(grads)
        self._intervene(activations)
        return loss, output

    def _intervene(self, activations: Sequence[torch.Tensor]) -> None:
        if self.interventions:
            with torch.no_grad():
                for intervention in self.interventions:
                    intervention.after_step(activations)

    def _apply(self, grads: Sequence[torch.Tensor | None]) -> None:
        apply_gradients = getattr(self.optimizer, "apply_gradients", None)
        if apply_gradients is not None:
            apply_gradients(grads)
            return
        for param, grad in zip(self._params, grads, strict=True):  # any torch.optim optimizer
            param.grad = grad
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "interventions": [i.state_dict() for i in self.interventions],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if len(state["interventions"]) != len(self.interventions):
            raise ValueError(
                f"checkpoint holds {len(state['interventions'])} interventions, "
                f"this learner has {len(self.interventions)}"
            )
        for intervention, saved in zip(self.interventions, state["interventions"], strict=True):
            intervention.load_state_dict(saved)
