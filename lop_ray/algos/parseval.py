"""Parseval regularisation (Chung, Cherif, Meger & Precup 2024, "Parseval Regularization for
Continual Reinforcement Learning", arXiv:2412.07224).

The method keeps every hidden weight matrix close to orthogonal (up to a scale s): to the loss it adds

    L_Parseval = λ Σ_ℓ ‖W_ℓ W_ℓᵀ − s I‖²_F,    ∇_{W_ℓ} L_Parseval = 4λ (W_ℓ W_ℓᵀ − s I) W_ℓ,

over every weight layer but the output layer (whose rows are the outputs, free to take any scale).
A matrix's rows are its layer's output units; a convolution's kernel is seen as (out, in·k·k), the
linear map it applies to each patch. Orthogonal rows keep the singular values of the layer equal,
so gradients neither vanish nor explode through it — the trainability that the paper argues a
network loses across tasks. Biases and norm parameters are not regularised.

The term is a gradient, added to the loss gradient before the optimizer step (so it goes through
momentum and Adam's moments as the loss's own gradient does, as adding it to the loss would);
`Backprop` asks every intervention with an `add_gradient` method for it. Each seed's term is computed
on its own matrices alone, so it does not depend on which seeds share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lop_ray.nets.units import WeightLayer

BROADCAST_LIMIT = 1 << 16  # out² · fan_in of one seed's matrix up to which products are broadcast


@dataclass(frozen=True)
class ParsevalConfig:
    parseval_strength: float = 1e-3  # λ
    parseval_scale: float = 1.0  # s: the target of every row's squared norm

    def __post_init__(self) -> None:
        if not self.parseval_strength > 0:
            raise ValueError(f"parseval_strength must be > 0, got {self.parseval_strength}")
        if not self.parseval_scale > 0:
            raise ValueError(f"parseval_scale must be > 0, got {self.parseval_scale}")


class ParsevalRegularisation:
    """Adds 4λ(WWᵀ − sI)W to the gradient of every hidden weight layer of a network of S seeds; does
    nothing after the step (an `Intervention` so that it travels, and checkpoints, with the rest)."""

    def __init__(self, weight_layers: Sequence[WeightLayer], config: ParsevalConfig) -> None:
        layers = list(weight_layers)[:-1]  # not the output layer
        if not layers:
            raise ValueError("Parseval regularisation needs a network with at least one hidden layer")
        self.config = config
        self.views = [layer.weight for layer in layers]
        self._positions: dict[int, int] | None = None

    def penalty(self) -> torch.Tensor:
        """(S,): Σ_ℓ ‖W_ℓ W_ℓᵀ − s I‖²_F of each seed (for tests and logging; not in the step)."""
        totals = []
        for seed in range(self.views[0].seeds):
            total = torch.zeros((), dtype=torch.float64)
            for view in self.views:
                weight = view.of()[seed].reshape(view.shape[1], -1)
                total = total + self._gram_excess(weight).double().pow(2).sum().cpu()
            totals.append(total)
        return torch.stack(totals)

    def _term(self, weight: torch.Tensor) -> torch.Tensor:
        """(WWᵀ − sI)W of every seed's (out, fan_in) matrix, (S, out, fan_in). Batched matrix
        products are not seed-invariant (a batched GEMM picks its blocking by the batch), so small
        matrices (regression's, where a loop over 100 seeds would cost more than the step) are
        multiplied as broadcast products summed over one axis, whose order does not depend on S, and
        large ones seed by seed; which is chosen depends on one seed's sizes only."""
        seeds, out, fan_in = weight.shape
        if out * out * fan_in <= BROADCAST_LIMIT:
            gram = (weight.unsqueeze(2) * weight.unsqueeze(1)).sum(dim=3)  # (S, out, out)
            gram.diagonal(dim1=1, dim2=2).sub_(self.config.parseval_scale)
            return (gram.unsqueeze(3) * weight.unsqueeze(1)).sum(dim=2)
        return torch.stack([self._gram_excess(w) @ w for w in weight])

    def _gram_excess(self, weight: torch.Tensor) -> torch.Tensor:
        """WWᵀ − sI of one seed's (out, fan_in) matrix."""
        gram = weight @ weight.T
        return gram - self.config.parseval_scale * torch.eye(
            gram.shape[0], dtype=gram.dtype, device=gram.device
        )

    @torch.no_grad()
    def add_gradient(self, params: Sequence[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
        """Adds the term to `grads`, the gradients of `params` (the optimizer's order), in place of
        the list's entries (a missing gradient counts as 0)."""
        if self._positions is None:
            self._positions = {id(param): i for i, param in enumerate(params)}
        four_lambda = 4.0 * self.config.parseval_strength
        for view in self.views:
            i = self._positions[id(view.tensor)]
            grad = torch.zeros_like(view.tensor) if grads[i] is None else grads[i].clone()
            weight = view.of().reshape(view.seeds, view.shape[1], -1)  # (S, out, fan_in)
            view.of(grad).add_(self._term(weight).mul_(four_lambda).reshape(view.shape))
            grads[i] = grad

    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        """Nothing: the method acts through the gradient."""

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint is of Parseval {state['config']}, this learner runs {asdict(self.config)}"
            )
