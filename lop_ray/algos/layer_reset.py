"""Layer and full resets (Nikishin et al. 2022, "The Primacy Bias in Deep Reinforcement Learning").

Every `reset_period` optimizer steps the last `layers` weight layers of the network (0: all of
them, a full reset) are returned to their initial *distribution*: redrawn as the network's
constructor draws them, from each seed's own generator, not restored to the trial's first values.
A norm layer on a reset layer's output restarts (γ = 1, β = 0, fresh statistics). The optimizer's
per-element state of the reset parameters restarts too when `reset_optimizer_state` (the paper's
agents start a reset layer with a fresh optimizer; keep the moments with `false`). Nothing else —
the data stream, the other layers — is touched, which is the method: the network forgets what it
has fitted in those layers and keeps what the rest of the learner holds.

The layers come from `UnitNetwork.weight_layers()`, so the method knows no network in particular.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lop_ray.algos.optim import per_element_state
from lop_ray.nets.units import SeedView, WeightLayer


@dataclass(frozen=True)
class LayerResetConfig:
    reset_period: int = 10_000  # optimizer (minibatch) steps between resets
    layers: int = 1  # the last `layers` weight layers are reset; 0: every layer (a full reset)
    reset_optimizer_state: bool = True

    def __post_init__(self) -> None:
        if self.reset_period < 1:
            raise ValueError(f"reset_period must be >= 1, got {self.reset_period}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0 (0: every layer), got {self.layers}")


class LayerReset:
    """An after-step intervention (`lop_ray.algos.backprop.Intervention`) over a network of S seeds;
    seed s's layers are redrawn from `generators[s]` (CPU generators: the draws are those of the
    network's constructor, made on the CPU and copied to the parameters' device)."""

    stream = 4000  # the learner-generator stream of the redraws, apart from the network's own (0)

    def __init__(
        self,
        weight_layers: Sequence[WeightLayer],
        optimizer: torch.optim.Optimizer,
        config: LayerResetConfig,
        generators: Sequence[torch.Generator],
    ) -> None:
        weight_layers = list(weight_layers)
        if config.layers > len(weight_layers):
            raise ValueError(
                f"layers = {config.layers}, but the network has {len(weight_layers)} weight layers"
                f" ({', '.join(layer.name for layer in weight_layers)})"
            )
        self.layers = weight_layers[-config.layers :] if config.layers else weight_layers
        self.optimizer = optimizer
        self.config = config
        self.generators = list(generators)
        seeds = self.layers[0].weight.seeds if self.layers else len(self.generators)
        if len(self.generators) != seeds:
            raise ValueError(f"{len(self.generators)} generators for a network of {seeds} seeds")
        self.steps = 0
        self.resets = 0
        self.replaced_total = torch.zeros(len(self.generators), dtype=torch.long)  # units redrawn

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        if self.steps % self.config.reset_period == 0:
            self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Redraw the chosen layers of every seed now (seed by seed, layer by layer, in the order the
        seed would draw them alone)."""
        for seed, generator in enumerate(self.generators):
            for layer in self.layers:
                weight, bias = layer.draw(generator)
                _assign(layer.weight, seed, weight)
                if layer.bias is not None:
                    _assign(layer.bias, seed, torch.zeros(layer.bias.shape[1:]) if bias is None else bias)
                for entry in layer.norm:
                    entry.view.of()[seed].fill_(entry.fresh)
                if self.config.reset_optimizer_state:
                    for view in (layer.weight, layer.bias):
                        if view is not None:
                            self._restart_state(view, seed)
                self.replaced_total[seed] += layer.weight.shape[1]
        self.resets += 1

    def _restart_state(self, view: SeedView, seed: int) -> None:
        for tensor in per_element_state(self.optimizer, view.tensor):
            view.of(tensor)[seed].zero_()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "resets": self.resets,
            "replaced_total": self.replaced_total.clone(),
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with layer-reset config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.resets = int(state["resets"])
        self.replaced_total = torch.as_tensor(state["replaced_total"]).clone().reshape(len(self.generators))
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved.cpu())


def _assign(view: SeedView, seed: int, value: torch.Tensor) -> None:
    target = view.of()[seed]
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"a fresh draw of shape {tuple(value.shape)} for a layer of {tuple(target.shape)}")
    target.copy_(value)
