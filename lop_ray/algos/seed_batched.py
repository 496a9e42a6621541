"""Interventions for seed-batched learners (`lop_ray.nets.seed_batched_mlp`): the same algorithms,
with every per-step draw counter-based (`counter_rng`) so that a seed draws what it draws alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lop_ray.algos.cbp import age_and_decay
from lop_ray.algos.counter_rng import CounterNoise


class SeedBatchedShrinkAndPerturb:
    """Adds N(0, perturb_scale²) noise to each (S, …) parameter after every optimizer step; the
    noise of seed s at step t is a function of (s's key, t, parameter index) only."""

    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], perturb_scale: float, keys: torch.Tensor
    ) -> None:
        self.parameters = list(parameters)
        self.perturb_scale = perturb_scale
        self.sizes = [param[0].numel() for param in self.parameters]
        # stream 1000: apart from continual backprop's per-layer streams (0, 1, 2, …) on the same keys
        self.noise = CounterNoise(keys, 1000, sum(self.sizes), "normal", self.parameters[0].dtype)
        self.steps = 0

    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            pieces = self.noise.at(self.steps).split(self.sizes, dim=1)
            for param, noise in zip(self.parameters, pieces, strict=True):
                param.add_(noise.reshape(param.shape), alpha=self.perturb_scale)
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


class SeedBatchedContinualBackprop:
    """Continual backprop (`lop_ray.algos.cbp`, same rules and options) over a `SeedBatchedMLP`.

    Utilities, ages, mean activations and accumulated replacement counts are (S, width) tensors
    updated for all seeds at once; the per-step draws (the probabilistic replacement rule, the
    `random` utility) are counter-based. Replacement itself is rare (ρ·n per step) and happens seed
    by seed, new weights drawn from that seed's own generator, the one its single-seed learner
    uses, so with the accumulate rule and a deterministic utility a batch of one follows the
    single-seed learner to float rounding.
    """

    def __init__(
        self,
        net,
        optimizer: torch.optim.Optimizer,
        config,
        generators: Sequence[torch.Generator],
        keys: torch.Tensor,
    ) -> None:
        from lop_ray.algos.cbp import UTIL_TYPES

        if config.util_type not in UTIL_TYPES:
            raise ValueError(f"unknown util_type {config.util_type!r}")
        self.net = net
        self.optimizer = optimizer
        self.config = config
        self.generators = list(generators)
        self.keys = keys
        self.steps = 0
        self.replaced_total = torch.zeros(len(self.generators), dtype=torch.long)
        self.state: list[dict[str, torch.Tensor]] = []
        # per-step draws, per layer: the probabilistic rule's uniform, the `random` utility
        self.replacement_draws = [
            CounterNoise(keys, 2 * i + 1, 1, "uniform", torch.float64) for i in range(len(net.layers) - 1)
        ]
        self.random_utilities = [
            CounterNoise(keys, 2 * i, layer.bias.shape[1], "uniform", layer.bias.dtype)
            for i, layer in enumerate(net.layers[:-1])
        ]
        for layer in net.layers[:-1]:
            like = layer.bias
            self.state.append(
                {
                    "utility": torch.zeros_like(like),
                    "bias_corrected_utility": torch.zeros_like(like),
                    "mean_activation": torch.zeros_like(like),
                    "age": torch.zeros(like.shape, dtype=torch.long, device=like.device),
                    "accumulated": torch.zeros(like.shape[0], dtype=torch.float64, device=like.device),
                }
            )

    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        chosen = [
            self._test(index, state, h)
            for index, (state, h) in enumerate(zip(self.state, activations, strict=True))
        ]
        for index, (state, (counts, mean_estimate)) in enumerate(zip(self.state, chosen, strict=True)):
            for seed_position in torch.nonzero(counts).reshape(-1).tolist():
                units = self._lowest_utility_units(state, seed_position, int(counts[seed_position]))
                self._generate(index, state, seed_position, units, mean_estimate)
                if self.config.reset_optimizer_state:
                    self._reset_optimizer(index, seed_position, units)
        self.steps += 1

    def _test(self, index: int, state: dict[str, torch.Tensor], h: torch.Tensor):
        """Update utilities of every seed; return the number of units each seed replaces (S,)."""
        cfg = self.config
        eta = cfg.decay_rate
        age = state["age"]
        bias_correction, mean_estimate = age_and_decay(state, eta, h.mean(dim=1))
        if cfg.util_type == "random":
            state["bias_corrected_utility"] = self.random_utilities[index].at(self.steps).clone()
        else:
            state["utility"] += (1.0 - eta) * self._instantaneous_utility(index, h, mean_estimate)
            state["bias_corrected_utility"] = state["utility"] / bias_correction
        mature = age > cfg.maturity_threshold
        eligible = mature.sum(dim=1)
        base = eligible if cfg.replacement_base == "eligible" else torch.full_like(eligible, age.shape[1])
        expected = cfg.replacement_rate * base.to(torch.float64)
        if cfg.accumulate:
            state["accumulated"] += torch.where(eligible > 0, expected, 0.0)
            counts = state["accumulated"].floor()
            state["accumulated"] -= counts
        else:
            draw = self.replacement_draws[index].at(self.steps)[:, 0]
            counts = torch.where(expected < 1.0, (draw < expected).to(torch.float64), expected.floor())
        return torch.minimum(counts.to(torch.long), eligible), mean_estimate

    def _instantaneous_utility(
        self, index: int, h: torch.Tensor, mean_estimate: torch.Tensor
    ) -> torch.Tensor:
        util_type = self.config.util_type
        incoming = self._mean_magnitude(index, dim=2)  # (S, width)
        outgoing = self._mean_magnitude(index + 1, dim=1)  # (S, width)
        if util_type == "adaptation":
            return 1.0 / incoming
        if util_type == "weight":
            return outgoing
        if util_type == "contribution":
            return outgoing * h.abs().mean(dim=1)
        deviation = (h - mean_estimate.unsqueeze(1)).abs().mean(dim=1)
        if util_type == "zero_contribution":
            return outgoing * deviation
        if util_type == "adaptable_contribution":
            return outgoing * deviation / incoming
        return deviation / incoming  # feature_by_input

    def _mean_magnitude(self, layer: int, dim: int) -> torch.Tensor:
        """Mean |w| of layer `layer`'s weights along `dim`. |W| goes into a reused buffer: on large
        layers a fresh S × 2000 × 2000 temporary every step (fresh pages, beyond the CPU allocator's
        cache) costs more than the reduction, and a fused `vector_norm` reduces strided dims slowly."""
        weight = self.net.layers[layer].weight
        buffers = self.__dict__.setdefault("_magnitude_buffers", {})
        buffer = buffers.get(layer)
        if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device:
            buffer = buffers[layer] = torch.empty_like(weight)
        return torch.abs(weight, out=buffer).mean(dim=dim)

    def _lowest_utility_units(self, state: dict[str, torch.Tensor], s: int, count: int) -> torch.Tensor:
        eligible = torch.nonzero(state["age"][s] > self.config.maturity_threshold).reshape(-1)
        order = torch.sort(state["bias_corrected_utility"][s][eligible], stable=True).indices
        return eligible[order[:count]]

    def _generate(self, index: int, state, s: int, units: torch.Tensor, mean_estimate: torch.Tensor) -> None:
        from lop_ray.nets.activations import init_bound

        incoming, outgoing = self.net.layers[index], self.net.layers[index + 1]
        if self.config.bias_correction:
            outgoing.bias[s] += (outgoing.weight[s][:, units] * mean_estimate[s, units]).sum(dim=1)
        fan_in, fan_out = incoming.weight.shape[2], incoming.weight.shape[1]
        bound = init_bound(self.config.init, self.net.activation_name, fan_in, fan_out)
        fresh = torch.empty((len(units), fan_in), dtype=incoming.weight.dtype, device=incoming.weight.device)
        incoming.weight[s, units] = fresh.uniform_(-bound, bound, generator=self.generators[s])
        incoming.bias[s, units] = 0.0
        outgoing.weight[s][:, units] = 0.0
        for key in ("utility", "bias_corrected_utility", "mean_activation", "age"):
            state[key][s, units] = 0
        self.replaced_total[s] += len(units)

    def _reset_optimizer(self, index: int, s: int, units: torch.Tensor) -> None:
        from lop_ray.algos.optim import reset_optimizer_entries

        incoming, outgoing = self.net.layers[index], self.net.layers[index + 1]
        reset_optimizer_entries(self.optimizer, incoming.weight, (s, units))
        reset_optimizer_entries(self.optimizer, incoming.bias, (s, units))
        reset_optimizer_entries(self.optimizer, outgoing.weight, (s, slice(None), units))

    def state_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "replaced_total": self.replaced_total.clone(),
            "groups": [{k: v.clone() for k, v in s.items()} for s in self.state],
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from dataclasses import asdict

        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with CBP config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.replaced_total = state["replaced_total"].clone()
        for mine, saved in zip(self.state, state["groups"], strict=True):
            for key, value in saved.items():
                mine[key] = value.to(mine[key].device).clone()
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved.cpu())
