"""Slowly-changing regression (spec/problems.md §1): the stream of (bits, target) examples.

The target is a fixed random network of linear threshold units; of the 20 input bits, 15 "slow"
bits change only every `flip_after` examples and 5 are fresh every example. Every flip period is
generated from its own generator, derived from (run seed, period), so the stream is a function of the
run seed alone: identical for every algorithm, identical however it is cut into steps, and a resumed
run regenerates the current period instead of storing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from lop_ray.data.seeding import STREAM, TARGET, generator


@dataclass(frozen=True)
class RegressionSettings:
    """`bit_change`: `redraw` all slow bits each period (the code's configs) or `flip_one` slow bit
    (the paper's text); spec/fidelity.md row 13."""

    num_inputs: int = 20
    num_slow_bits: int = 15
    flip_after: int = 10_000
    bit_change: Literal["redraw", "flip_one"] = "redraw"
    target_hidden_units: int = 100
    threshold_beta: float = 0.7


class ThresholdTarget:
    """20 → 100 linear threshold units → 1, every weight and bias drawn from {−1, +1}.

    Unit i fires when its pre-activation is strictly above τ_i = β·(m + 1) − S_i with
    S_i = (m − Σ_j W_ij + b_i) / 2.
    """

    def __init__(self, settings: RegressionSettings, seed: int) -> None:
        gen = generator(seed, TARGET)
        m, n = settings.num_inputs, settings.target_hidden_units

        def signs(*shape: int) -> torch.Tensor:
            return torch.randint(0, 2, shape, generator=gen).float() * 2 - 1

        self.w1, self.b1 = signs(n, m), signs(n)
        self.w2, self.b2 = signs(n), signs(1)
        negatives = (m - self.w1.sum(dim=1) + self.b1) / 2
        self.threshold = settings.threshold_beta * (m + 1) - negatives

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hidden = (x @ self.w1.T + self.b1 > self.threshold).float()
        return (hidden @ self.w2 + self.b2).unsqueeze(1)


class RegressionStream:
    """Serves the stream in order, any number of examples at a time, on the CPU."""

    def __init__(self, settings: RegressionSettings, seed: int) -> None:
        self.settings = settings
        self.seed = seed
        self.target = ThresholdTarget(settings, seed)
        self.position = 0
        self._previous_pattern: torch.Tensor | None = None  # slow bits of the period before
        self._period_index = -1
        self._period: tuple[torch.Tensor, torch.Tensor] | None = None

    def take(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `count` examples: inputs (count, num_inputs) and targets (count, 1)."""
        if count <= 0:
            return torch.zeros(0, self.settings.num_inputs), torch.zeros(0, 1)
        xs, ys = [], []
        while count > 0:
            period = self.position // self.settings.flip_after
            offset = self.position % self.settings.flip_after
            x, y = self._period_data(period)
            chunk = min(count, self.settings.flip_after - offset)
            xs.append(x[offset : offset + chunk])
            ys.append(y[offset : offset + chunk])
            self.position += chunk
            count -= chunk
        return torch.cat(xs), torch.cat(ys)

    def _period_data(self, period: int) -> tuple[torch.Tensor, torch.Tensor]:
        if period == self._period_index:
            return self._period
        if period != self._period_index + 1 and self._period_index != -1:
            raise RuntimeError("the stream is read in order; periods cannot be skipped")
        if self._period is not None:
            self._previous_pattern = self._period[0][0, : self.settings.num_slow_bits].clone()
        s = self.settings
        gen = generator(self.seed, STREAM, period)
        if s.bit_change == "redraw" or self._previous_pattern is None:
            slow = torch.randint(0, 2, (s.num_slow_bits,), generator=gen).float()
        else:
            slow = self._previous_pattern.clone()
            flip = torch.randint(0, s.num_slow_bits, (1,), generator=gen)
            slow[flip] = 1.0 - slow[flip]
        num_fast = s.num_inputs - s.num_slow_bits
        fast_bits = torch.randint(0, 2, (s.flip_after, num_fast), generator=gen)
        x = torch.cat([slow.expand(s.flip_after, -1), fast_bits.float()], dim=1)
        self._period_index = period
        self._period = (x, self._targets(slow, fast_bits, x))
        return self._period

    def _targets(self, slow: torch.Tensor, fast_bits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Within a period only the fast bits vary, so the target takes at most 2^fast values: look
        them up instead of running the target network on every example (it was ~80 % of the
        stream's cost). Exact either way: the target's arithmetic is on small integers."""
        num_fast = fast_bits.shape[1]
        if 2**num_fast >= len(fast_bits):
            return self.target(x)
        place_values = 2 ** torch.arange(num_fast - 1, -1, -1)
        patterns = (torch.arange(2**num_fast).unsqueeze(1) // place_values) % 2
        table = self.target(torch.cat([slow.expand(len(patterns), -1), patterns.float()], dim=1))
        return table[(fast_bits * place_values).sum(dim=1)]

    def state_dict(self) -> dict[str, Any]:
        """Position and the slow bits the current period was derived from; the period's examples
        are regenerated on load."""
        period = self.position // self.settings.flip_after
        if period == self._period_index:
            before = self._previous_pattern
        elif self._period is not None:  # the next take() starts a period derived from this one
            before = self._period[0][0, : self.settings.num_slow_bits].clone()  # not a view of the period
        else:  # nothing generated since construction or load
            before = self._previous_pattern
        return {"position": self.position, "pattern_before_period": before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        before = state["pattern_before_period"]
        self._previous_pattern = None if before is None else before.clone()
        self._period_index = self.position // self.settings.flip_after - 1
        self._period = None
