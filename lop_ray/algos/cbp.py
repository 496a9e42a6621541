"""Continual backprop: one generic generate-and-test over a network's unit groups.

After every optimizer step, every hidden unit's utility is updated from this step's activations; a
small fraction of the mature units with the lowest utility are re-initialised (spec/algorithms.md).
The three phases — test all layers, generate in all layers, then reset the optimizer's entries — run
over *all* layers in that order, because re-initialising one layer zeroes the outgoing weights that
are the next layer's incoming ones.

All state is tensors (one set per unit group) so that a leading seed axis can be added later, and
all of it is returned by `state_dict` because exact resume depends on it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from lop_ray.algos.optim import reset_optimizer_entries
from lop_ray.nets.activations import init_bound
from lop_ray.nets.units import UnitGroup

UtilType = Literal[
    "weight",
    "contribution",
    "zero_contribution",
    "adaptable_contribution",
    "feature_by_input",
    "adaptation",
    "random",
]
UTIL_TYPES: tuple[str, ...] = UtilType.__args__  # type: ignore[attr-defined]
InitScheme = Literal["kaiming", "xavier", "lecun", "default"]
ReplacementBase = Literal["eligible", "width"]
UtilityAverage = Literal["ema", "cumulative"]
InitDistribution = Literal["uniform", "normal"]


@dataclass(frozen=True)
class CBPConfig:
    """Continual backprop's hyper-parameters, named as the paper names them.

    `accumulate`: carry the fractional number of units to replace from step to step (True), or
    replace one unit with probability ρ·n when ρ·n < 1 (False, "probabilistic").
    `bias_correction` and `reset_optimizer_state` are the corrected behaviours (spec/fidelity.md rows
    1 and 2); the original code effectively ran with both off. `replacement_base`: ρ times the number
    of eligible units (corrected) or times the layer width (the original conv/ResNet variants).
    `utility_average`: the decayed, bias-corrected average (`ema`) or the original CIFAR variant's
    `cumulative` one, o_i × Σ (1−η)·mean|h_i|, never decayed nor reset (fidelity.md row 5).
    `init_distribution`: new incoming weights uniform in ±B (B from `init`) or normal with the same
    variance, N(0, B²/3) — the CIFAR original's Kaiming-normal draw for `init: kaiming`.
    """

    replacement_rate: float = 1e-4
    maturity_threshold: int = 100
    decay_rate: float = 0.99
    util_type: UtilType = "contribution"
    init: InitScheme = "kaiming"
    accumulate: bool = False
    bias_correction: bool = True
    reset_optimizer_state: bool = True
    replacement_base: ReplacementBase = "eligible"
    utility_average: UtilityAverage = "ema"
    init_distribution: InitDistribution = "uniform"

    def __post_init__(self) -> None:
        if not 0.0 <= self.replacement_rate <= 1.0:
            raise ValueError(f"replacement_rate must be in [0, 1], got {self.replacement_rate}")
        if not 0.0 <= self.decay_rate < 1.0:
            raise ValueError(f"decay_rate must be in [0, 1), got {self.decay_rate}")
        if self.maturity_threshold < 0:
            raise ValueError(f"maturity_threshold must be >= 0, got {self.maturity_threshold}")
        if self.util_type not in UTIL_TYPES:
            raise ValueError(f"unknown util_type {self.util_type!r}; allowed: {list(UTIL_TYPES)}")
        if self.utility_average == "cumulative" and self.util_type not in ("weight", "contribution"):
            raise ValueError(
                f"utility_average 'cumulative' takes util_type 'weight' or 'contribution', got {self.util_type!r}"
            )


class ContinualBackprop:
    """Generate-and-test over `groups`, attached to a learner as an after-step intervention."""

    def __init__(
        self,
        groups: Sequence[UnitGroup],
        optimizer: torch.optim.Optimizer,
        config: CBPConfig,
        generator: torch.Generator | None,
    ) -> None:
        self.groups = list(groups)
        self.optimizer = optimizer
        self.config = config
        # every draw (new weights, the probabilistic rule, `random` utilities) on the CPU
        self.generator = cpu_generator(generator)
        self._own_generator = self.generator is not generator  # then it is state of its own
        self.replaced_total = 0
        self.state: list[dict[str, torch.Tensor]] = []
        for group in self.groups:
            like = group.incoming.weight
            zeros = torch.zeros(group.width, dtype=like.dtype, device=like.device)
            self.state.append(
                {
                    "utility": zeros.clone(),
                    "bias_corrected_utility": zeros.clone(),
                    "mean_activation": zeros.clone(),
                    "age": torch.zeros(group.width, dtype=torch.long, device=like.device),
                    "accumulated": torch.zeros((), dtype=torch.float64),
                }
            )
            if config.utility_average == "cumulative":
                self.state[-1]["activation_sum"] = zeros.clone()

    # --- the three phases -------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        if len(activations) != len(self.groups):
            raise ValueError(f"{len(activations)} activations for {len(self.groups)} unit groups")
        chosen = [
            self._test(group, state, h)
            for group, state, h in zip(self.groups, self.state, activations, strict=True)
        ]
        for group, state, (units, mean_estimate) in zip(self.groups, self.state, chosen, strict=True):
            if len(units):
                units = units.to(group.incoming.weight.device)
                self._generate(group, state, units, mean_estimate)
        if self.config.reset_optimizer_state:
            for group, (units, _) in zip(self.groups, chosen, strict=True):
                if len(units):
                    self._reset_optimizer(group, units)

    def _test(
        self, group: UnitGroup, state: dict[str, torch.Tensor], h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update utilities; return the units to replace and the bias-corrected mean activation."""
        cfg = self.config
        eta = cfg.decay_rate
        age = state["age"]
        bias_correction, mean_estimate = age_and_decay(state, eta, _per_unit_mean(h))

        if cfg.utility_average == "cumulative":
            state["activation_sum"] += (1.0 - eta) * _per_unit_mean(h.abs())
            utility = group.outgoing_magnitude()
            if cfg.util_type == "contribution":
                utility = utility * state["activation_sum"]
            state["bias_corrected_utility"] = utility
        elif cfg.util_type == "random":
            state["bias_corrected_utility"] = torch.rand(
                group.width, generator=self.generator, dtype=mean_estimate.dtype
            ).to(age.device)
        else:
            state["utility"] += (1.0 - eta) * self._instantaneous_utility(group, h, mean_estimate)
            state["bias_corrected_utility"] = state["utility"] / bias_correction

        mature = age > cfg.maturity_threshold
        num_eligible = int(mature.sum())
        if num_eligible == 0:
            return _NO_UNITS, mean_estimate
        base = num_eligible if cfg.replacement_base == "eligible" else group.width
        expected = cfg.replacement_rate * base
        if cfg.accumulate:
            state["accumulated"] += expected
            count = int(math.floor(state["accumulated"].item()))
            state["accumulated"] -= count
        elif expected < 1.0:
            draw = torch.rand(1, generator=self.generator).item()
            count = int(draw < expected)
        else:
            count = int(expected)
        count = min(count, num_eligible)
        if count == 0:
            return _NO_UNITS, mean_estimate
        eligible = torch.nonzero(mature).reshape(-1)
        order = torch.sort(state["bias_corrected_utility"][eligible], stable=True).indices
        return eligible[order[:count]], mean_estimate

    def _instantaneous_utility(
        self, group: UnitGroup, h: torch.Tensor, mean_estimate: torch.Tensor
    ) -> torch.Tensor:
        util_type = self.config.util_type
        if util_type == "adaptation":
            return 1.0 / group.incoming_magnitude()
        if util_type == "weight":
            return group.outgoing_magnitude()
        if util_type == "contribution":
            return _output_weighted(group, h.abs())
        deviation = (h - _broadcast_units(mean_estimate, h)).abs()
        if util_type == "zero_contribution":
            return _output_weighted(group, deviation)
        if util_type == "adaptable_contribution":
            return _output_weighted(group, deviation) / group.incoming_magnitude()
        if util_type == "feature_by_input":
            return _per_unit_mean(deviation) / group.incoming_magnitude()
        raise ValueError(f"unknown util_type {util_type!r}")

    def _generate(
        self,
        group: UnitGroup,
        state: dict[str, torch.Tensor],
        units: torch.Tensor,
        mean_estimate: torch.Tensor,
    ) -> None:
        incoming, outgoing = group.incoming, group.outgoing
        if self.config.bias_correction and outgoing.bias is not None:
            outgoing.bias += (group.outgoing_sum(units) * mean_estimate[units, None]).sum(dim=0)
        bound = init_bound(self.config.init, group.activation, group.fan_in, group.fan_out)
        fresh = torch.empty((len(units), *incoming.weight.shape[1:]), dtype=incoming.weight.dtype)
        if self.config.init_distribution == "normal":
            fresh.normal_(0.0, bound / math.sqrt(3.0), generator=self.generator)
        else:
            fresh.uniform_(-bound, bound, generator=self.generator)
        incoming.weight[units] = fresh.to(incoming.weight.device)
        if incoming.bias is not None:
            incoming.bias[units] = 0.0
        outgoing.weight[:, group.outgoing_columns(units)] = 0.0
        if group.norm is not None:
            _reset_norm_entries(group.norm, units)
        for key in ("utility", "bias_corrected_utility", "mean_activation", "age"):
            state[key][units] = 0  # a cumulative `activation_sum` is never reset (the original's)
        self.replaced_total += len(units)

    def _reset_optimizer(self, group: UnitGroup, units: torch.Tensor) -> None:
        opt = self.optimizer
        reset_optimizer_entries(opt, group.incoming.weight, (units,))
        if group.incoming.bias is not None:
            reset_optimizer_entries(opt, group.incoming.bias, (units,))
        columns = group.outgoing_columns(units)
        reset_optimizer_entries(opt, group.outgoing.weight, (slice(None), columns))
        if group.norm is not None and group.norm.affine:
            reset_optimizer_entries(opt, group.norm.weight, (units,))
            reset_optimizer_entries(opt, group.norm.bias, (units,))

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "config": asdict(self.config),
            "replaced_total": self.replaced_total,
            "groups": [{k: v.clone() for k, v in s.items()} for s in self.state],
        }
        if self._own_generator:  # a shared CPU generator is saved by its owner
            state["cpu_generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with CBP config {state['config']}, not {asdict(self.config)}"
            )
        self.replaced_total = int(state["replaced_total"])
        for mine, saved in zip(self.state, state["groups"], strict=True):
            for key, value in saved.items():
                mine[key] = value.to(mine[key].device).clone()
        if self._own_generator and "cpu_generator" in state:
            self.generator.set_state(state["cpu_generator"].cpu())


_NO_UNITS = torch.zeros(0, dtype=torch.long)


def cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The generator CBP draws from: `generator` itself on the CPU; for another device's generator,
    a CPU generator with its seed. CUDA's generator draws other numbers than the CPU's from the same
    seed, so drawing there would make new units depend on the device; drawn on the CPU, a CUDA run
    follows the CPU run. One per generator: learners that share a generator (PPO's policy and value
    CBP) share its CPU generator, drawing in turn as on the CPU. It takes the seed, not the
    position: give it a generator nothing has drawn from (the experiments build CBP right after
    creating the learner's generator). None (PyTorch's global CPU generator) stays None."""
    if generator is None or generator.device.type == "cpu":
        return generator
    twin = _CPU_GENERATORS.get(generator)
    if twin is None:
        twin = _CPU_GENERATORS[generator] = torch.Generator().manual_seed(generator.initial_seed())
    return twin


_CPU_GENERATORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def age_and_decay(
    state: dict[str, torch.Tensor], eta: float, mean_activation: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step of every unit's bookkeeping: one step older, utility decayed, running mean activation
    updated; returns the bias correction 1 − η^age and the bias-corrected mean activation."""
    state["age"] += 1
    bias_correction = 1.0 - torch.pow(eta, state["age"]).to(state["utility"].dtype)
    state["utility"] *= eta
    state["mean_activation"].mul_(eta).add_(mean_activation, alpha=1.0 - eta)
    return bias_correction, state["mean_activation"] / bias_correction


def _per_unit_mean(h: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the unit axis (dim 1): batch for linear, batch and positions for conv."""
    if h.dim() == 2:
        return h.mean(dim=0)
    return h.transpose(0, 1).reshape(h.shape[1], -1).mean(dim=1)


def _output_weighted(group: UnitGroup, values: torch.Tensor) -> torch.Tensor:
    """Each unit's mean outgoing |w| times its mean `values` (|h| or |h − f̂|). A unit flattened into
    several columns of a linear layer (conv → linear) takes the product per column, then the mean
    over its columns, as the original does (spec/algorithms.md, unit groups)."""
    if group.fan_out_per_unit == 1:
        return group.outgoing_magnitude() * _per_unit_mean(values)
    shape = (group.width, group.fan_out_per_unit)
    per_column_weight = group.outgoing.weight.detach().abs().mean(dim=0).reshape(shape)
    return (per_column_weight * values.mean(dim=0).reshape(shape)).mean(dim=1)


def _broadcast_units(per_unit: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return per_unit.reshape(1, -1, *([1] * (h.dim() - 2)))


def _reset_norm_entries(norm: torch.nn.Module, units: torch.Tensor) -> None:
    reset_units = getattr(norm, "reset_units", None)
    if reset_units is not None:  # a norm that knows its own per-unit state (online normalisation)
        reset_units(units)
        return
    if norm.affine:
        norm.weight[units] = 1.0
        norm.bias[units] = 0.0
    if norm.track_running_stats:
        norm.running_mean[units] = 0.0
        norm.running_var[units] = 1.0
