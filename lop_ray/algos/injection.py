"""Plasticity injection (Nikishin et al. 2023, "Deep Reinforcement Learning with Plasticity
Injection", NeurIPS 2023, arXiv:2305.15555).

The network is an encoder φ and a head h_θ (here: its last `head_layers` weight layers, a plain
linear stack). At an injection the head's parameters θ are frozen, and a freshly initialised head
θ′ is added together with a frozen copy θ′₀ of its initial parameters:

    y(x) = h_θ(φ(x)) + h_θ′(φ(x)) − h_θ′₀(φ(x))

At that moment θ′ = θ′₀, so the output is unchanged (no bias in the predictions) and the number of
trainable parameters is the same: θ′ takes the head's place in the network, so the optimizer, the
other interventions and the metrics see it as the head, while θ and θ′₀ are held here, outside the
optimizer (no update, no weight decay, no noise). The encoder keeps learning: its gradient flows
through all three heads (frozen parameters, not frozen inputs). The optimizer's per-element state of
the head restarts, as a new head's would.

The paper injects once; a continual stream can inject every `injection_period` optimizer steps
(`max_injections` caps the count; 1 is the paper's protocol). A later injection freezes the current
sum: for a one-layer head the frozen terms of every injection add up to one linear map
ΔW = Σ (W_old − W′₀), Δb likewise, so the cost stays one extra product; a deeper head keeps each
injection's pair of frozen heads, and its cost grows by two heads per injection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lop_ray.algos.optim import per_element_state
from lop_ray.nets.seed_linear import seed_linear
from lop_ray.nets.units import UnitNetwork

Head = list[tuple[torch.Tensor, torch.Tensor]]  # (weight (S, out, in), bias (S, out)) per layer


@dataclass(frozen=True)
class InjectionConfig:
    injection_period: int = 100_000  # optimizer (minibatch) steps between injections
    head_layers: int = 1  # the head: the network's last `head_layers` weight layers
    max_injections: int = 0  # 0: every period; 1: the paper's single injection

    def __post_init__(self) -> None:
        if self.injection_period < 1:
            raise ValueError(f"injection_period must be >= 1, got {self.injection_period}")
        if self.head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {self.head_layers}")
        if self.max_injections < 0:
            raise ValueError(f"max_injections must be >= 0 (0: no limit), got {self.max_injections}")


def head_output(
    head: Head, x: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    for index, (weight, bias) in enumerate(head):
        x = seed_linear(x, weight, bias)
        if index < len(head) - 1:
            x = activation(x)
    return x


class FrozenHeads:
    """The frozen terms the network adds to its output once injected: Σ over injections of
    h_θ(φ) − h_θ′₀(φ), φ the input of the head's first layer (`initial` None: a summed linear map).
    What the network calls (`UnitNetwork.head_correction`) and what PPO's runners copy to act."""

    def __init__(self, layers: int, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.layers = layers
        self.activation = activation
        self.heads: list[tuple[Head, Head | None]] = []

    def __call__(self, head_inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        features = head_inputs[-self.layers]
        total = None
        for old, initial in self.heads:
            term = head_output(old, features, self.activation)
            if initial is not None:
                term = term - head_output(initial, features, self.activation)
            total = term if total is None else total + term
        return total


class PlasticityInjection:
    """An after-step intervention (`lop_ray.algos.backprop.Intervention`) over a network of S seeds;
    seed s's new heads are drawn from `generators[s]` as the network's constructor draws them."""

    stream = 7000  # the learner-generator stream of the new heads

    def __init__(
        self,
        net: UnitNetwork,
        optimizer: torch.optim.Optimizer,
        config: InjectionConfig,
        generators: Sequence[torch.Generator],
    ) -> None:
        layers = net.weight_layers()
        if config.head_layers > net.injectable_layers():
            raise ValueError(
                f"head_layers = {config.head_layers}, but this network's last {net.injectable_layers()} "
                f"weight layer(s) are its plain linear head ({', '.join(layer.name for layer in layers)})"
            )
        self.net = net
        self.head = layers[-config.head_layers :]
        self.optimizer = optimizer
        self.config = config
        self.generators = list(generators)
        if len(self.generators) != self.head[0].weight.seeds:
            raise ValueError(
                f"{len(self.generators)} generators for a network of {self.head[0].weight.seeds} seeds"
            )
        self.steps = 0
        self.injections = 0
        self.frozen = FrozenHeads(config.head_layers, net.head_activation())

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        limit = self.config.max_injections
        if self.steps % self.config.injection_period == 0 and (limit == 0 or self.injections < limit):
            self.inject()

    @torch.no_grad()
    def inject(self) -> None:
        """Freeze the head as it is, and give the network a fresh one and its frozen initial copy."""
        current = [(layer.weight.of().clone(), layer.bias.of().clone()) for layer in self.head]
        fresh = self._draw()
        for layer, (weight, bias) in zip(self.head, fresh, strict=True):
            layer.weight.of().copy_(weight)
            layer.bias.of().copy_(bias)
            for view in (layer.weight, layer.bias):
                for state in per_element_state(self.optimizer, view.tensor):
                    state.zero_()
        heads = self.frozen.heads
        if len(self.head) == 1:  # a linear head: every injection's frozen terms sum to one map
            (weight, bias), (weight0, bias0) = current[0], fresh[0]
            delta = (weight - weight0, bias - bias0)
            if heads:
                ((summed_weight, summed_bias),), _ = heads[0]
                delta = (summed_weight + delta[0], summed_bias + delta[1])
            heads[:] = [([delta], None)]
        else:
            heads.append((current, fresh))
        self.injections += 1
        self.net.head_correction = self.frozen

    def _draw(self) -> Head:
        """Each seed's fresh head, drawn layer by layer in forward order from its own generator, on
        the CPU as the constructor draws, stacked over the seeds."""
        per_seed = [[layer.draw(generator) for layer in self.head] for generator in self.generators]
        drawn = []
        for index, layer in enumerate(self.head):
            like = layer.weight.of()
            weight = torch.stack([seed[index][0] for seed in per_seed]).to(like)
            biases = [seed[index][1] for seed in per_seed]
            bias_shape = layer.bias.of().shape[1:]
            bias = torch.stack([torch.zeros(bias_shape) if b is None else b for b in biases]).to(like)
            drawn.append((weight, bias))
        return drawn

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "injections": self.injections,
            "frozen_heads": [
                {"old": _flat(old), "initial": None if initial is None else _flat(initial)}
                for old, initial in self.frozen.heads
            ],
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with injection config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.injections = int(state["injections"])
        device = self.head[0].weight.tensor.device
        self.frozen.heads = [
            (
                _head(saved["old"], device),
                None if saved["initial"] is None else _head(saved["initial"], device),
            )
            for saved in state["frozen_heads"]
        ]
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved.cpu())
        self.net.head_correction = self.frozen if self.frozen.heads else None


def _flat(head: Head) -> list[torch.Tensor]:
    return [tensor.clone() for layer in head for tensor in layer]


def _head(flat: Sequence[torch.Tensor], device: torch.device) -> Head:
    return [(flat[i].to(device), flat[i + 1].to(device)) for i in range(0, len(flat), 2)]
