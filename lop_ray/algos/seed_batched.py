"""Interventions for seed-batched learners (`lop_ray.nets.seed_batched_mlp`): the same algorithms,
with every per-step draw counter-based (`counter_rng`) so that a seed draws what it draws alone."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy
import torch

from lop_ray.algos.cbp import age_and_decay
from lop_ray.algos.cbp_statistics_kernel import UTILITY_CODES, update_unit_statistics
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
    `random` utility) are counter-based. Replacement is decided and applied on the device for every
    seed at once, without a host synchronisation: each layer takes every seed's K lowest-utility
    eligible units (K: the most units a seed can replace in a step, known on the host from ρ and
    the width) and overwrites the first `count` of them, masked (`torch.where`), the rest of the K
    keeping their values. On a CUDA device a synchronisation per step would stall the host until
    the queued step finishes, leaving the GPU idle while the next step is launched (the step was 4×
    BP's, docs/performance.md); on the CPU it costs nothing, so there a layer where no seed replaces
    skips the masked work (`host_gate`).

    New weights are uniform draws from each seed's own generator on the CPU (the one its
    single-seed learner uses), in the same order and amount as drawing them there step by step, so
    a CUDA run follows a CPU run and a batch of one follows the single-seed learner to float
    rounding (with the accumulate rule and a deterministic utility). Which seeds draw how much is
    known only on the device, so the draws are taken ahead: a per-seed pool of raw uniforms drawn on
    the CPU, consumed on the device through per-seed cursors. Every `refill_steps` steps the host
    reads the cursors (one synchronisation) and, when the next period's worst case might not fit,
    drops what each seed used and draws as many new values.
    """

    refill_steps = 32  # steps between reads of the pool's cursors (one host synchronisation each)
    # a CPU layer with at most this many incoming + outgoing weights per seed updates its statistics
    # in one compiled call (`cbp_statistics_kernel`): there PyTorch's ~80 calls are all dispatch
    compiled_statistics_limit = 1 << 16

    def __init__(
        self,
        net,
        optimizer: torch.optim.Optimizer,
        config,
        generators: Sequence[torch.Generator],
        keys: torch.Tensor,
    ) -> None:
        from lop_ray.algos.cbp import UTIL_TYPES, cpu_generator
        from lop_ray.nets.activations import init_bound

        if config.util_type not in UTIL_TYPES:
            raise ValueError(f"unknown util_type {config.util_type!r}")
        if config.utility_average != "ema" or config.init_distribution != "uniform":
            raise ValueError(
                "seed-batched CBP takes utility_average 'ema' and init_distribution 'uniform' "
                f"(the MLP experiments'), got {config.utility_average!r} and {config.init_distribution!r}"
            )
        if net.layers[0].weight.dtype != torch.float32:
            # the pool reproduces the CPU's float32 uniform_ bit for bit; float64's differs in the last bit
            raise ValueError(f"seed-batched CBP needs float32 weights, got {net.layers[0].weight.dtype}")
        self.net = net
        self.optimizer = optimizer
        self.config = config
        # a CUDA generator draws other numbers than the CPU's: draw from its seed's CPU generator
        self.generators = [cpu_generator(g) for g in generators]
        self.keys = keys
        self.steps = 0
        device = net.layers[0].weight.device
        self.host_gate = device.type == "cpu"
        self.replaced_total = torch.zeros(len(self.generators), dtype=torch.long, device=device)
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
        # K per layer: ρ·base ≤ ρ·width units expected, plus one carried by the accumulate rule
        widths = [layer.bias.shape[1] for layer in net.layers[:-1]]
        self.most_per_step = [min(w, math.floor(config.replacement_rate * w) + 1) for w in widths]
        fan_ins = [layer.weight.shape[2] for layer in net.layers[:-1]]
        # uniform_(−B, B) on the CPU computes x·(to − from) + from in float64 from float32 bounds
        self._bounds = [
            float(numpy.float32(init_bound(config.init, net.activation_name, fan_in, width)))
            for fan_in, width in zip(fan_ins, widths, strict=True)
        ]
        self._draws_per_step = sum(k * f for k, f in zip(self.most_per_step, fan_ins, strict=True))
        self.compiled_statistics = [
            device.type == "cpu"
            and net.layers[i].weight[0].numel() + net.layers[i + 1].weight[0].numel()
            <= self.compiled_statistics_limit
            for i in range(len(widths))
        ]
        self._reset_pool([g.get_state() for g in self.generators])

    # --- the pool of new weights' draws ---------------------------------------------------------
    def _reset_pool(self, states: Sequence[torch.Tensor]) -> None:
        """A full pool drawn from generator states `states` (the states at the consumed position):
        room for two refill periods' worst case, so that most refills find room and draw nothing."""
        size = 2 * self.refill_steps * self._draws_per_step
        pool = torch.empty((len(self.generators), size), dtype=torch.float32)
        for row, generator, state in zip(pool, self.generators, states, strict=True):
            generator.set_state(state)
            row.uniform_(0.0, 1.0, generator=generator)
        device = self.replaced_total.device
        self._pool = pool.to(device)
        self._cursor = torch.zeros(len(self.generators), dtype=torch.long, device=device)
        self._snapshots = [state.clone() for state in states]
        self._behind = [0] * len(self.generators)  # draws from each snapshot to its pool row's start
        self._steps_since_refill = 0

    def _refill(self) -> None:
        """Drop what each seed consumed, append as many fresh draws: one synchronisation. Done only
        when the next period's worst case might not fit (replacement is rare: mostly it fits)."""
        consumed = self._cursor.tolist()
        self._steps_since_refill = 0
        size = self._pool.shape[1]
        if max(consumed) + self.refill_steps * self._draws_per_step <= size:
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

    def _consumed_states(self) -> list[torch.Tensor]:
        """Each generator's state after exactly the draws the seed has used (as drawn step by step)."""
        states = []
        for s, cursor in enumerate(self._cursor.tolist()):
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
        if self._steps_since_refill == self.refill_steps:
            self._refill()
        self._steps_since_refill += 1
        chosen = [
            self._compiled_test(index, state, h)
            if self.compiled_statistics[index]
            else self._test(index, state, h)
            for index, (state, h) in enumerate(zip(self.state, activations, strict=True))
        ]
        for index, (state, (counts, mean_estimate)) in enumerate(zip(self.state, chosen, strict=True)):
            if self.host_gate and int(counts.max()) == 0:  # (`any` casts to bool first: more calls)
                continue
            self._replace(index, state, counts, mean_estimate)
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
            mean_estimate, counts,
        )  # fmt: skip
        return torch.from_numpy(counts), torch.from_numpy(mean_estimate)

    def _statistics_arrays(self, index: int, state: dict[str, torch.Tensor]) -> list[numpy.ndarray]:
        keys = ("utility", "bias_corrected_utility", "mean_activation", "age", "accumulated")
        tensors = [self.net.layers[index].weight, self.net.layers[index + 1].weight]
        tensors += [state[key] for key in keys]
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
            cached = cache[index] = (storage, [t.detach().numpy() for t in tensors] + extra)
        return cached[1]

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
        """Mean |w| of layer `layer`'s weights along `dim`.

        On the CPU |W| goes into a reused buffer: on large layers a fresh S × 2000 × 2000 temporary
        every step (fresh pages, beyond the CPU allocator's cache) costs more than the reduction, and
        a fused `vector_norm` reduces strided dims slowly there. On a GPU the fused 1-norm reads the
        weights once instead of three times (|W| written, then read back), the same sum to rounding.
        """
        weight = self.net.layers[layer].weight
        if weight.device.type != "cpu":
            return torch.linalg.vector_norm(weight, 1, dim=dim).div_(weight.shape[dim])
        buffers = self.__dict__.setdefault("_magnitude_buffers", {})
        buffer = buffers.get(layer)
        if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device:
            buffer = buffers[layer] = torch.empty_like(weight)
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
        """Seed s re-initialises its `counts[s]` lowest-utility eligible units of layer `index`: the
        same writes as one seed at a time, masked over each seed's K candidates."""
        from lop_ray.algos.optim import _PER_ELEMENT_STATE

        k = self.most_per_step[index]
        units = self._lowest_utility_units(state, k)
        chosen = torch.arange(k, device=counts.device) < counts.unsqueeze(1)  # (S, K)
        incoming, outgoing = self.net.layers[index], self.net.layers[index + 1]
        if self.config.bias_correction:
            columns = outgoing.weight.gather(2, _along(units, outgoing.weight, 2))  # (S, out, K)
            product = columns * mean_estimate.gather(1, units).unsqueeze(1)
            outgoing.bias += torch.where(chosen.unsqueeze(1), product, 0.0).sum(dim=2)
        num_seeds, _, fan_in = incoming.weight.shape
        offsets = torch.arange(k * fan_in, device=counts.device)
        raw = self._pool.gather(1, self._cursor.unsqueeze(1) + offsets).view(num_seeds, k, fan_in)
        bound = self._bounds[index]
        fresh = (raw.double() * (bound + bound) - bound).float()
        self._cursor += counts * fan_in
        _put(incoming.weight, 1, units, chosen, fresh)
        _put(incoming.bias, 1, units, chosen, 0.0)
        _put(outgoing.weight, 2, units, chosen, 0.0)
        for key in ("utility", "bias_corrected_utility", "mean_activation", "age"):
            _put(state[key], 1, units, chosen, 0)
        self.replaced_total += counts
        if self.config.reset_optimizer_state:
            for param, dim in ((incoming.weight, 1), (incoming.bias, 1), (outgoing.weight, 2)):
                param_state = self.optimizer.state.get(param) or {}
                for key in _PER_ELEMENT_STATE:
                    tensor = param_state.get(key)
                    if isinstance(tensor, torch.Tensor) and tensor.shape == param.shape:
                        _put(tensor, dim, units, chosen, 0)

    def state_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "config": asdict(self.config),
            "steps": self.steps,
            "replaced_total": self.replaced_total.clone(),
            "groups": [{k: v.clone() for k, v in s.items()} for s in self.state],
            "generators": self._consumed_states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from dataclasses import asdict

        if state["config"] != asdict(self.config):
            raise ValueError(
                f"checkpoint was written with CBP config {state['config']}, not {asdict(self.config)}"
            )
        self.steps = int(state["steps"])
        self.replaced_total = state["replaced_total"].to(self.replaced_total.device).clone()
        for mine, saved in zip(self.state, state["groups"], strict=True):
            for key, value in saved.items():
                mine[key] = value.to(mine[key].device).clone()
        self._reset_pool([saved.cpu() for saved in state["generators"]])


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
