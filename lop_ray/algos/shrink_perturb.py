"""Shrink-and-perturb's perturbation. The shrink is the optimizer's coupled weight decay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


class ShrinkAndPerturb:
    """Adds N(0, perturb_scale²) noise to each given parameter after every optimizer step.

    Which parameters are perturbed differs per problem (linear/conv weights and biases; every
    parameter in CIFAR; not PPO's log-std), so the caller passes them.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        perturb_scale: float,
        generator: torch.Generator,
    ) -> None:
        self.parameters = list(parameters)
        self.perturb_scale = perturb_scale
        self.generator = generator

    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for param in self.parameters:
                noise = torch.randn(
                    param.shape, generator=self.generator, device=param.device, dtype=param.dtype
                )
                param.add_(noise, alpha=self.perturb_scale)

    def state_dict(self) -> dict[str, Any]:
        return {}  # stateless: its randomness lives in the learner's generator

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
