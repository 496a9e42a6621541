"""Continual backprop: one generic generate-and-test over a network's unit groups.

After every optimizer step, every hidden unit's utility is updated from this step's activations; a
small fraction of the mature units with the lowest utility are re-initialised (spec/algorithms.md).
The three phases — test all layers, generate in all layers, then reset the optimizer's entries — run
over *all* layers in that order, because re-initialising one layer zeroes the outgoing weights that
are the next layer's incoming ones.

It runs S seeds at once over groups with a leading seed axis (`lop_ray.nets.units`); one seed is
S = 1. Nothing in a step mixes seeds, so a seed's trajectory does not depend on which other seeds
share its batch. All of the state is returned by `state_dict`, because exact resume depends on it.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy
import torch

from lop_ray.algos.cbp_statistics_kernel import UTILITY_CODES, saturation_age, update_unit_statistics
from lop_ray.algos.counter_rng import CounterNoise
from lop_ray.algos.optim import per_element_state
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
    """Generate-and-test over `groups` for S seeds at once, attached to a learner as an after-step
    intervention; S = 1 is the single-seed learner.

    Utilities, ages, mean activations and accumulated replacement counts are (S, width) tensors
    updated for all seeds at once; the per-step draws (the probabilistic replacement rule, the
    `random` utility) are counter-based (`counter_rng`), so a seed draws what it draws alone.
    Replacement is applied for every seed at once: each group takes every seed's K lowest-utility
    eligible units (K: the most units a seed can replace in a step, known on the host from ρ and
    the width) and overwrites the first `count` of them, masked (`torch.where`), the rest of the K
    keeping their values.

    New incoming weights come from each seed's own generator, on the CPU, in the order and amount
    of drawing them step by step. On the CPU they are drawn when needed (a layer where no seed
    replaces skips the masked work: reading the counts costs nothing there). On a CUDA device a
    read of the counts per step would stall the host until the queued step finishes, leaving the GPU
    idle while the next step is launched, so there the draws are taken ahead (`draw_ahead`): a
    per-seed pool of raw uniforms drawn on the CPU, consumed on the device through per-seed cursors;
    every `refill_steps` steps the host reads the cursors (one synchronisation) and, when the next
    period's worst case might not fit, drops what each seed used and draws as many new values. Both
    ways give the same numbers. A generator shared with another consumer (PPO's policy and value
    CBP) must not be drawn ahead: pass `draw_ahead=False`.
    """

    refill_steps = 32  # steps between reads of the pool's cursors (one host synchronisation each)
    # a CPU group of linear layers with at most this many incoming + outgoing weights per seed
    # updates its statistics in one compiled call (`cbp_statistics_kernel`): there PyTorch's ~80
    # calls are all dispatch
    compiled_statistics_limit = 1 << 16

    def __init__(
        self,
        groups: Sequence[UnitGroup],
        optimizer: torch.optim.Optimizer,
        config: CBPConfig,
        generators: Sequence[torch.Generator | None] | torch.Generator | None,
        keys: torch.Tensor | None = None,
        draw_ahead: bool | None = None,
    ) -> None:
        self.groups = list(groups)
        self.optimizer = optimizer
        self.config = config
        if generators is None or isinstance(generators, torch.Generator):
            generators = [generators]
        # every draw of new weights on the CPU: a CUDA generator draws other numbers than the CPU's
        self.generators = [cpu_generator(g) for g in generators]
        num_seeds = len(self.generators)
        for group in self.groups:
            if group.seeds != num_seeds:
                raise ValueError(
                    f"group {group.name} holds {group.seeds} seeds, {num_seeds} generators given"
                )
        first = self.groups[0].incoming.tensor if self.groups else None
        device = first.device if first is not None else torch.device("cpu")
        self.keys = generator_keys(generators, device) if keys is None else keys.to(device)
        self.steps = 0
        if draw_ahead is None:
            draw_ahead = device.type != "cpu"
        if draw_ahead and (config.init_distribution != "uniform" or first.dtype != torch.float32):
            # the pool reproduces the CPU's float32 uniform_ bit for bit, nothing else
            draw_ahead = False
        self.draw_ahead = bool(draw_ahead) and bool(self.groups)
        # read the counts on the host each step, skipping the groups where no seed replaces: free on
        # the CPU, and what drawing new weights when needed takes anyway (one read for all groups)
        self.host_gate = device.type == "cpu" or not self.draw_ahead
        self.replaced_total = torch.zeros(num_seeds, dtype=torch.long, device=device)
        self.state: list[dict[str, torch.Tensor]] = []
        for group in self.groups:
            like = group.incoming.of()
            zeros = torch.zeros((num_seeds, group.width), dtype=like.dtype, device=device)
            self.state.append(
                {
                    "utility": zeros.clone(),
                    "bias_corrected_utility": zeros.clone(),
                    "mean_activation": zeros.clone(),
                    "age": torch.zeros(zeros.shape, dtype=torch.long, device=device),
                    "accumulated": torch.zeros(num_seeds, dtype=torch.float64, device=device),
                }
            )
            if config.utility_average == "cumulative":
                self.state[-1]["activation_sum"] = zeros.clone()
        # per-step draws, per group: the probabilistic rule's uniform, the `random` utility
        self.replacement_draws = [
            CounterNoise(self.keys, 2 * i + 1, 1, "uniform", torch.float64) for i in range(len(self.groups))
        ]
        self.random_utilities = [
            CounterNoise(self.keys, 2 * i, group.width, "uniform", group.incoming.tensor.dtype)
            for i, group in enumerate(self.groups)
        ]
        # K per group: ρ·base ≤ ρ·width units expected, plus one carried by the accumulate rule
        widths = [group.width for group in self.groups]
        self.most_per_step = [min(w, math.floor(config.replacement_rate * w) + 1) for w in widths]
        self.bounds = [init_bound(config.init, g.activation, g.fan_in, g.fan_out) for g in self.groups]
        self.saturated_age = int(saturation_age(config.decay_rate))  # compiled statistics skip η^age
        self.compiled_statistics = [
            device.type == "cpu"
            and config.utility_average == "ema"
            and group.fan_out_per_unit == 1
            and len(group.incoming.shape) == 3
            and len(group.outgoing.shape) == 3
            and group.incoming.tensor.dtype == torch.float32
            and group.fan_in * group.width + group.outgoing.shape[1] * group.width
            <= self.compiled_statistics_limit
            for group in self.groups
        ]
        if self.draw_ahead:
            self._start_pool()

    def draw_from_pool(self) -> None:
        """Draw new weights from the pool (`draw_ahead`) from now on: the same numbers, read through
        per-seed cursors, as compiled loops that replace units themselves need (the regression
        kernel). Only for uniform float32 draws, which the pool reproduces bit for bit."""
        if self.draw_ahead or not self.groups:
            return
        if (
            self.config.init_distribution != "uniform"
            or self.groups[0].incoming.tensor.dtype != torch.float32
        ):
            raise ValueError("the pool of new weights reproduces uniform float32 draws only")
        self.draw_ahead = True
        self._start_pool()

    def _start_pool(self) -> None:
        # uniform_(−B, B) on the CPU computes x·(to − from) + from in float64 from float32 bounds
        self._pool_bounds = [float(numpy.float32(b)) for b in self.bounds]
        fans = [g.fan_in for g in self.groups]
        self._draws_per_step = sum(k * f for k, f in zip(self.most_per_step, fans, strict=True))
        self._reset_pool([_state_of(g) for g in self.generators])

    def refill_pool(self) -> None:
        """Drop the draws every seed has used and append as many fresh ones (the pool's cursors
        return to 0): for callers that consume the pool themselves."""
        self._refill(force=True)

    # --- the pool of new weights' draws (draw_ahead) --------------------------------------------
    def _reset_pool(self, states: Sequence[torch.Tensor | None]) -> None:
        """A full pool drawn from generator states `states` (the states at the consumed position):
        room for two refill periods' worst case, so that most refills find room and draw nothing."""
        size = 2 * self.refill_steps * self._draws_per_step
        pool = torch.empty((len(self.generators), size), dtype=torch.float32)
        for row, generator, state in zip(pool, self.generators, states, strict=True):
            _set_state(generator, state)
            row.uniform_(0.0, 1.0, generator=generator)
        device = self.replaced_total.device
        self._pool = pool.to(device)
        self._cursor = torch.zeros(len(self.generators), dtype=torch.long, device=device)
        self._snapshots = [None if state is None else state.clone() for state in states]
        self._behind = [0] * len(self.generators)  # draws from each snapshot to its pool row's start
        self._steps_since_refill = 0

    def _refill(self, force: bool = False) -> None:
        """Drop what each seed consumed, append as many fresh draws: one synchronisation. Done only
        when the next period's worst case might not fit (replacement is rare: mostly it fits)."""
        consumed = self._cursor.tolist()
        self._steps_since_refill = 0
        size = self._pool.shape[1]
        if (
            max(consumed) == 0
            or not force
            and max(consumed) + self.refill_steps * self._draws_per_step <= size
        ):
            return
        fresh = torch.zeros((len(consumed), max(consumed)), dtype=torch.float32)
        for s, count in enumerate(consumed):
            if count:
                fresh[s, :count].uniform_(0.0, 1.0, generator=self.generators[s])
                self._behind[s] += count
        position = self._cursor.unsqueeze(1) + torch.arange(size, device=self._pool.device)
        kept = self._pool.gather(1, position.clamp(max=size - 1))
        appended = fresh.to(self._pool.device).gather(1, (position - size).clamp(0, fresh.shape[1] - 1))
        self._pool = torch.where(position < size, kept, appended)
        self._cursor.zero_()

    def _consumed_states(self) -> list[torch.Tensor | None]:
        """Each generator's state after exactly the draws the seed has used (as drawn step by step)."""
        if not self.draw_ahead:
            return [_state_of(g) for g in self.generators]
        states = []
        for s, cursor in enumerate(self._cursor.tolist()):
            if self._snapshots[s] is None:
                states.append(None)
                continue
            scratch = torch.Generator()
            scratch.set_state(self._snapshots[s])
            remaining = self._behind[s] + cursor
            while remaining > 0:
                chunk = min(remaining, 1 << 22)
                torch.empty(chunk, dtype=torch.float32).uniform_(0.0, 1.0, generator=scratch)
                remaining -= chunk
            states.append(scratch.get_state())
            self._snapshots[s], self._behind[s] = states[-1].clone(), -cursor
        return states

    # --- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, activations: Sequence[torch.Tensor]) -> None:
        if len(activations) != len(self.groups):
            raise ValueError(f"{len(activations)} activations for {len(self.groups)} unit groups")
        if self.draw_ahead:
            if self._steps_since_refill == self.refill_steps:
                self._refill()
            self._steps_since_refill += 1
        chosen = []
        for index, (group, state, h) in enumerate(zip(self.groups, self.state, activations, strict=True)):
            h = group.seed_activations(h)
            compiled = self.compiled_statistics[index] and h.dim() == 3
            chosen.append(self._compiled_test(index, state, h) if compiled else self._test(index, state, h))
        replacing = [True] * len(chosen)
        if self.host_gate and len(chosen) == 1:  # (`any` casts to bool first: more calls)
            replacing = [int(chosen[0][0].max()) > 0]
        elif self.host_gate and chosen:
            replacing = [m > 0 for m in torch.stack([counts.max() for counts, _ in chosen]).tolist()]
        for index, (state, (counts, mean_estimate)) in enumerate(zip(self.state, chosen, strict=True)):
            if replacing[index]:
                self._replace(index, state, counts, mean_estimate)
        self.steps += 1

    def _test(self, index: int, state: dict[str, torch.Tensor], h: torch.Tensor):
        """Update utilities of every seed; return the units each seed replaces (S,) and the
        bias-corrected mean activation (S, width)."""
        cfg = self.config
        group = self.groups[index]
        eta = cfg.decay_rate
        age = state["age"]
        bias_correction, mean_estimate = age_and_decay(state, eta, _unit_mean(h))
        if cfg.utility_average == "cumulative":
            state["activation_sum"] += (1.0 - eta) * _unit_mean(h.abs())
            utility = self._outgoing_magnitude(index)
            if cfg.util_type == "contribution":
                utility = utility * state["activation_sum"]
            state["bias_corrected_utility"] = utility
        elif cfg.util_type == "random":
            state["bias_corrected_utility"] = self.random_utilities[index].at(self.steps).clone()
        else:
            state["utility"] += (1.0 - eta) * self._instantaneous_utility(index, h, mean_estimate)
            state["bias_corrected_utility"] = state["utility"] / bias_correction
        mature = age > cfg.maturity_threshold
        eligible = mature.sum(dim=1)
        width = torch.full_like(eligible, group.width)
        base = eligible if cfg.replacement_base == "eligible" else width
        expected = cfg.replacement_rate * base.to(torch.float64)
        if cfg.accumulate:
            state["accumulated"] += torch.where(eligible > 0, expected, 0.0)
            counts = state["accumulated"].floor()
            state["accumulated"] -= counts
        else:
            draw = self.replacement_draws[index].at(self.steps)[:, 0]
            counts = torch.where(expected < 1.0, (draw < expected).to(torch.float64), expected.floor())
        return torch.minimum(counts.to(torch.long), eligible), mean_estimate

    def _compiled_test(self, index: int, state: dict[str, torch.Tensor], h: torch.Tensor):
        """`_test` as one compiled call (`cbp_statistics_kernel`), in place on the state tensors.
        Their numpy views are made once per storage (a checkpoint load swaps them): converting ten
        tensors every step would cost as much as the call."""
        arrays = self._statistics_arrays(index, state)
        (weights_in, weights_out, utility, corrected, mean_activation, age, accumulated,
         zeros_utility, zeros_draws, mean_estimate, counts) = arrays  # fmt: skip
        cfg = self.config
        random_utility = zeros_utility
        if cfg.util_type == "random":
            random_utility = self.random_utilities[index].at(self.steps).numpy()
        draws = zeros_draws
        if not cfg.accumulate:
            draws = self.replacement_draws[index].at(self.steps)[:, 0].contiguous().numpy()
        update_unit_statistics(
            h.detach().reshape(h.shape[0], -1, h.shape[-1]).numpy(),
            weights_in, weights_out, utility, corrected, mean_activation, age, accumulated,
            random_utility, draws,
            float(cfg.decay_rate), UTILITY_CODES[cfg.util_type], int(cfg.maturity_threshold),
            float(cfg.replacement_rate), cfg.replacement_base == "eligible", bool(cfg.accumulate),
            mean_estimate, counts, self.saturated_age,
        )  # fmt: skip
        return torch.from_numpy(counts), torch.from_numpy(mean_estimate)

    def _statistics_arrays(self, index: int, state: dict[str, torch.Tensor]) -> list[numpy.ndarray]:
        keys = ("utility", "bias_corrected_utility", "mean_activation", "age", "accumulated")
        group = self.groups[index]
        tensors = [group.incoming.of(), group.outgoing.of()] + [state[key] for key in keys]
        storage = tuple(t.data_ptr() for t in tensors)
        cache = self.__dict__.setdefault("_statistics_cache", {})
        cached = cache.get(index)
        if cached is None or cached[0] != storage:
            like = state["utility"]
            extra = [
                numpy.zeros(like.shape, numpy.float32),  # the `random` utility, unused by the others
                numpy.zeros(like.shape[0], numpy.float64),  # the probabilistic rule's draws, unused
                numpy.empty(like.shape, numpy.float32),  # mean estimate (out)
                numpy.empty(like.shape[0], numpy.int64),  # counts (out)
            ]
            cached = cache[index] = (storage, [t.numpy() for t in tensors] + extra)
        return cached[1]

    def _instantaneous_utility(
        self, index: int, h: torch.Tensor, mean_estimate: torch.Tensor
    ) -> torch.Tensor:
        util_type = self.config.util_type
        if util_type == "adaptation":
            return 1.0 / self._incoming_magnitude(index)
        if util_type == "weight":
            return self._outgoing_magnitude(index)
        if util_type == "contribution":
            return self._output_weighted(index, h.abs())
        deviation = (h - _broadcast_units(mean_estimate, h)).abs()
        if util_type == "zero_contribution":
            return self._output_weighted(index, deviation)
        if util_type == "adaptable_contribution":
            return self._output_weighted(index, deviation) / self._incoming_magnitude(index)
        return _unit_mean(deviation) / self._incoming_magnitude(index)  # feature_by_input

    def _output_weighted(self, index: int, values: torch.Tensor) -> torch.Tensor:
        """Each unit's mean outgoing |w| times its mean `values` (|h| or |h − f̂|). A unit flattened into
        several columns of a linear layer (conv → linear) takes the product per column, then the mean
        over its columns, as the original does (spec/algorithms.md, unit groups)."""
        group = self.groups[index]
        if group.fan_out_per_unit == 1:
            return self._outgoing_magnitude(index) * _unit_mean(values)
        shape = (group.seeds, group.width, group.fan_out_per_unit)
        weight = group.outgoing.of().abs()  # a conv layer's: mean over its outputs and kernel
        per_column = weight.mean(dim=1) if weight.dim() == 3 else weight.flatten(3).mean(dim=(1, 3))
        # a column's value: the mean over the positions it covers (a CReLU output of a conv unit: H·W)
        per_column_value = values.mean(dim=1).reshape(*shape, -1).mean(dim=3)
        return (per_column.reshape(shape) * per_column_value).mean(dim=2)

    def _incoming_magnitude(self, index: int) -> torch.Tensor:
        group = self.groups[index]
        if len(group.incoming.shape) == 3:
            return self._mean_magnitude(group.incoming.of(), 2, ("in", index))
        return group.incoming_magnitude()

    def _outgoing_magnitude(self, index: int) -> torch.Tensor:
        group = self.groups[index]
        if len(group.outgoing.shape) == 3 and group.fan_out_per_unit == 1:
            return self._mean_magnitude(group.outgoing.of(), 1, ("out", index))
        return group.outgoing_magnitude()

    def _mean_magnitude(self, weight: torch.Tensor, dim: int, key: tuple) -> torch.Tensor:
        """Mean |w| of (S, a, b) weights along `dim`.

        On the CPU |W| goes into a reused buffer: on large layers a fresh S × 2000 × 2000 temporary
        every step (fresh pages, beyond the CPU allocator's cache) costs more than the reduction, and
        a fused `vector_norm` reduces strided dims slowly there. On a GPU the fused 1-norm reads the
        weights once instead of three times (|W| written, then read back), the same sum to rounding.
        """
        if weight.device.type != "cpu":
            return torch.linalg.vector_norm(weight, 1, dim=dim).div_(weight.shape[dim])
        buffers = self.__dict__.setdefault("_magnitude_buffers", {})
        buffer = buffers.get(key)
        if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device:
            buffer = buffers[key] = torch.empty_like(weight)
        return torch.abs(weight, out=buffer).mean(dim=dim)

    def _lowest_utility_units(self, state: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """Each seed's k eligible units of lowest utility, lowest first, ties to the lower index
        (then ineligible ones, which the caller masks): (S, k). Two stable sorts, by utility then
        eligible first, order exactly as sorting each seed's eligible units alone."""
        by_utility = torch.sort(state["bias_corrected_utility"], dim=1, stable=True).indices
        ineligible = (state["age"] <= self.config.maturity_threshold).gather(1, by_utility)
        eligible_first = torch.sort(ineligible.to(torch.uint8), dim=1, stable=True).indices[:, :k]
        return by_utility.gather(1, eligible_first)

    def _replace(
        self, index: int, state: dict[str, torch.Tensor], counts: torch.Tensor, mean_estimate: torch.Tensor
    ) -> None:
        """Seed s re-initialises its `counts[s]` lowest-utility eligible units of group `index`: the
        same writes as one seed at a time, masked over each seed's K candidates."""
        group = self.groups[index]
        k = self.most_per_step[index]
        counts = counts.to(self.replaced_total.device)
        units = self._lowest_utility_units(state, k)
        chosen = torch.arange(k, device=counts.device) < counts.unsqueeze(1)  # (S, K)
        outgoing = group.outgoing_by_unit()  # (S, next, width, columns·kernel)
        if self.config.bias_correction and group.outgoing_bias is not None:
            columns = outgoing.gather(2, _along(units, outgoing, 2))  # (S, next, K, columns·kernel)
            columns = columns.squeeze(3) if columns.shape[3] == 1 else columns.sum(dim=3)
            product = columns * mean_estimate.to(columns.device).gather(1, units).unsqueeze(1)
            group.outgoing_bias.of().add_(torch.where(chosen.unsqueeze(1), product, 0.0).sum(dim=2))
        fresh = self._fresh_weights(index, counts)
        incoming = group.incoming.of()
        _put(incoming, 1, units, chosen, fresh.view(*units.shape, *incoming.shape[2:]))
        if group.incoming_bias is not None:
            _put(group.incoming_bias.of(), 1, units, chosen, 0.0)
        _put(outgoing, 2, units, chosen, 0.0)
        for entry in group.norm:
            _put(entry.view.of(), 1, units, chosen, entry.fresh)
        for key in ("utility", "bias_corrected_utility", "mean_activation", "age"):
            _put(
                state[key], 1, units, chosen, 0
            )  # a cumulative `activation_sum` is never reset (the original's)
        self.replaced_total = self.replaced_total + counts  # (not in place: callers keep old totals)
        if self.config.reset_optimizer_state:
            self._reset_optimizer(group, units, chosen)

    def _fresh_weights(self, index: int, counts: torch.Tensor) -> torch.Tensor:
        """(S, K, fan_in): seed s's first counts[s] rows drawn from its generator as the
        single-seed learner draws them; the other rows are masked by the caller."""
        group = self.groups[index]
        k, fan_in = self.most_per_step[index], group.fan_in
        seeds = len(self.generators)
        dtype = group.incoming.tensor.dtype
        if self.draw_ahead:
            offsets = torch.arange(k * fan_in, device=counts.device)
            raw = self._pool.gather(1, self._cursor.unsqueeze(1) + offsets).view(seeds, k, fan_in)
            bound = self._pool_bounds[index]
            self._cursor += counts * fan_in
            return (raw.double() * (bound + bound) - bound).to(dtype)
        bound = self.bounds[index]
        fresh = torch.zeros((seeds, k, fan_in), dtype=dtype)
        for s, count in enumerate(counts.tolist()):
            if count:
                rows = fresh[s, :count]
                if self.config.init_distribution == "normal":
                    rows.normal_(0.0, bound / math.sqrt(3.0), generator=self.generators[s])
                else:
                    rows.uniform_(-bound, bound, generator=self.generators[s])
        return fresh.to(group.incoming.tensor.device)

    def _reset_optimizer(self, group: UnitGroup, units: torch.Tensor, chosen: torch.Tensor) -> None:
        """Zero the momentum / Adam moments / per-element step counts of exactly the re-initialised
        weights (of every tensor the optimizer keeps per element)."""
        views = [(group.incoming, 1), (group.incoming_bias, 1)]
        views += [(entry.view, 1) for entry in group.norm]
        for view, dim in views + [(group.outgoing, 2)]:
            if view is None:
                continue
            for tensor in per_element_state(self.optimizer, view.tensor):
                target = group.outgoing_by_unit(tensor) if view is group.outgoing else view.of(tensor)
                _put(target, dim, units, chosen, 0)

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "replaced_total": self.replaced_total.clone(),
            "groups": [{k: v.clone() for k, v in s.items()} for s in self.state],
            "generators": self._consumed_states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with CBP config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.replaced_total = state["replaced_total"].to(self.replaced_total.device).clone()
        for mine, saved in zip(self.state, state["groups"], strict=True):
            for key, value in saved.items():
                mine[key] = value.to(mine[key].device).clone()
        states = [None if saved is None else saved.cpu() for saved in state["generators"]]
        if self.draw_ahead:
            self._reset_pool(states)
        else:
            for generator, saved in zip(self.generators, states, strict=True):
                _set_state(generator, saved)


def generator_keys(generators: Sequence[torch.Generator | None], device: torch.device | str) -> torch.Tensor:
    """One counter-RNG key per seed from its generator's seed (for callers that pass no keys)."""
    from lop_ray.data.seeding import derived_seed

    seeds = [(g.initial_seed() if g is not None else torch.initial_seed()) for g in generators]
    return torch.tensor([derived_seed(seed, 7) & 0xFFFFFFFF for seed in seeds], device=device)


def _state_of(generator: torch.Generator | None) -> torch.Tensor | None:
    return None if generator is None else generator.get_state()


def _set_state(generator: torch.Generator | None, state: torch.Tensor | None) -> None:
    if generator is not None and state is not None:
        generator.set_state(state)


def _unit_mean(h: torch.Tensor) -> torch.Tensor:
    """(S, width): mean over the batch (and the positions of a conv layer) of (S, B, width, …)."""
    if h.dim() == 3:
        return h.mean(dim=1)
    return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], -1).mean(dim=2)


def _broadcast_units(per_unit: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(S, width) laid along (S, B, width, …)."""
    return per_unit.reshape(per_unit.shape[0], 1, per_unit.shape[1], *([1] * (h.dim() - 3)))


def _along(per_candidate: torch.Tensor, tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """(S, K) per-candidate values laid along `tensor`'s unit axis `dim`, expanded over its other axes."""
    shape = [per_candidate.shape[0]] + [1] * (tensor.dim() - 1)
    shape[dim] = per_candidate.shape[1]
    expanded = list(tensor.shape)
    expanded[dim] = per_candidate.shape[1]
    return per_candidate.view(shape).expand(expanded)


def _put(tensor: torch.Tensor, dim: int, units: torch.Tensor, chosen: torch.Tensor, values) -> None:
    """tensor[s, units[s, k]] (along `dim`) = values where chosen[s, k]; the other candidates keep theirs."""
    index = _along(units, tensor, dim)
    kept = tensor.gather(dim, index)
    tensor.scatter_(dim, index, torch.where(_along(chosen, tensor, dim), values, kept))


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
