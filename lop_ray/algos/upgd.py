"""UPGD: utility-based perturbed gradient descent (Elsayed & Mahmood 2024, "Addressing Loss of
Plasticity and Catastrophic Forgetting in Continual Learning", ICLR 2024), the first-order,
global-max variant of the authors' reference code.

Each weight's utility, the loss increase its removal would cause, is approximated to first order as
u = −g·θ and averaged, Ū ← β_u·Ū + (1 − β_u)·u, with bias correction Û = Ū/(1 − β_uᵗ). Scaled by the
seed's largest average utility η = max Ū over all its parameters, s = σ(Û/η) ∈ (0, 1) says how
useful the weight is; the update protects useful weights and perturbs the others:

    θ ← θ·(1 − lr·wd) − 2·lr·(g + ξ)·(1 − s),   ξ ~ N(0, σ²)

(the factor 2 and the decoupled decay are the reference code's). Useless weights get the full
noisy step — plasticity — and useful ones almost none — protection against forgetting.

Over the seed axis: η is each seed's own maximum, the noise is each seed's own (`SeedNoise`), and
t counts per element, so that a weight that continual backprop or ReDo restarts (its entries of
`PER_ELEMENT_STATE` zeroed) starts its average afresh with a correct bias correction. A seed whose
largest average utility is not positive (no weight is useful yet, e.g. all gradients 0) has every
s = σ(−∞) = 0: the plain noisy step; the reference divides by it as it is (0 gives NaN there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lop_ray.algos.seed_noise import SeedNoise
from lop_ray.nets.seed_elementwise import per_seed_elementwise
from lop_ray.nets.units import SeedView


@dataclass(frozen=True)
class UPGDConfig:
    beta_utility: float = 0.999  # β_u, the reference's default
    sigma: float = 0.001  # σ of the perturbation, the reference's default

    def __post_init__(self) -> None:
        if not 0 <= self.beta_utility < 1:
            raise ValueError(f"beta_utility must be in [0, 1), got {self.beta_utility}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


class UPGD(torch.optim.Optimizer):
    """UPGD over parameters with a leading seed axis (`views`, S = 1 for one seed); takes the
    gradients as a list (`apply_gradients`), as the other optimizers here."""

    def __init__(
        self,
        views: Sequence[SeedView],
        lr: float,
        weight_decay: float,
        config: UPGDConfig,
        noise: SeedNoise,
    ) -> None:
        self.views = list(views)
        self.config = config
        self.noise = noise
        super().__init__(
            [view.tensor for view in self.views],
            dict(lr=lr, weight_decay=weight_decay, beta_utility=config.beta_utility, sigma=config.sigma),
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.apply_gradients([view.tensor.grad for view in self.views])
        return loss

    @torch.no_grad()
    def apply_gradients(self, grads: Sequence[torch.Tensor | None]) -> None:
        group = self.param_groups[0]
        beta, lr = group["beta_utility"], group["lr"]
        seeds = self.views[0].seeds
        largest = torch.full((seeds,), -torch.inf, device=self.views[0].tensor.device)
        corrected = []
        for view, grad in zip(self.views, grads, strict=True):
            state = self.state[view.tensor]
            if not state:
                state["avg_utility"] = torch.zeros_like(view.tensor)
                state["step"] = torch.zeros_like(view.tensor)
            grad = torch.zeros_like(view.tensor) if grad is None else grad
            average, steps = view.of(state["avg_utility"]), view.of(state["step"])
            steps += 1
            average.mul_(beta).add_(-view.of(grad) * view.of(), alpha=1 - beta)
            largest = torch.maximum(largest, average.reshape(seeds, -1).amax(dim=1))
            corrected.append(
                (view, view.of(grad), average / per_seed_elementwise(lambda t: 1 - beta**t, steps))
            )
        useful = largest > 0
        for (view, grad, utility), noise in zip(corrected, self.noise.draw(), strict=True):
            shape = (seeds, *([1] * (utility.dim() - 1)))
            ratio = torch.where(useful.reshape(shape), utility / largest.reshape(shape), -torch.inf)
            params = view.of()
            params.mul_(1 - lr * group["weight_decay"])
            keep = 1 - per_seed_elementwise(torch.sigmoid, ratio)
            params.add_((grad + group["sigma"] * noise) * keep, alpha=-2.0 * lr)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["noise"] = self.noise.state_dict()
        state["upgd"] = asdict(self.config)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("upgd", None)
        if saved != asdict(self.config):
            raise ValueError(f"checkpoint is of UPGD {saved}, this learner runs {asdict(self.config)}")
        self.noise.load_state_dict(state_dict.pop("noise"))
        super().load_state_dict(state_dict)
