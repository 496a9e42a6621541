"""Slowly-changing regression (spec/problems.md §1): the stream of (bits, target) examples.

The target is a fixed random network of linear threshold units; of the 20 input bits, 15 "slow"
bits change only every `flip_after` examples and 5 are fresh every example. Every random bit of the
stream is counter-based (`lop_ray.algos.counter_rng`'s hash of the seed's stream key, the period and
the element), so the stream is a function of the run seed alone: identical for every algorithm,
identical however it is cut into steps, any example computable without the ones before it except
for `flip_one`'s pattern, which each period derives from the last. The compiled regression learner
(`lop_ray.experiments.regression_kernel`) generates the stream inside its loop with the same
functions (`advance_pattern`, `target_table`, `example_target`), so both paths see the same examples.

The generator changed on 2026-12-06 (issue 16) from one Mersenne twister per period to the counter
hash, vectorisable over seeds and cheap enough to generate inside the compiled loop; checkpoints
record it (`GENERATOR`), and one written by the old stream is refused rather than continued on
another stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import torch

from lop_ray.algos.counter_rng import counter_base, counter_element
from lop_ray.data.seeding import STREAM, TARGET, derived_seed, generator

GENERATOR = "counter-lowbias32"  # the stream's generator, recorded in its checkpoints
# counter streams of the stream key: a period's slow bits, flip_one's flipped bit, the fast bits
SLOW_BITS, FLIPPED_BIT, FAST_BITS = 0, 1, 2
# periods whose fast bits are at most this many take their targets from a table of every pattern
TABLE_BITS = 12


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

    @property
    def num_fast_bits(self) -> int:
        return self.num_inputs - self.num_slow_bits


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

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(w1, b1, w2, b2, threshold) as float32 numpy arrays, for the compiled stream."""
        return tuple(t.numpy() for t in (self.w1, self.b1, self.w2, self.b2, self.threshold))


def stream_key(seed: int) -> int:
    """The 32-bit counter key of run `seed`'s stream."""
    return derived_seed(seed, STREAM) & 0xFFFFFFFF


@numba.njit(cache=True, inline="always")
def _bit(base: np.uint64, position: int) -> np.float32:
    """Bit `position` of the draw whose `counter_base` is `base`: bit position % 32 of its element
    position // 32."""
    word = counter_element(base, np.uint64(position // 32))
    return np.float32((word >> np.uint64(position % 32)) & np.uint64(1))


@numba.njit(cache=True)
def advance_pattern(
    key: np.uint64, pattern: np.ndarray, pattern_period: int, period: int, flip_one: bool
) -> int:
    """Make `pattern` (the slow bits of period `pattern_period`; −1: none yet) those of `period`;
    returns `period`. `redraw` draws every period's bits afresh; `flip_one` draws period 0's and
    then flips one bit per period, so it walks forward from the pattern it holds."""
    if period == pattern_period:
        return period
    num_slow = pattern.shape[0]
    if not flip_one or pattern_period < 0 or period < pattern_period:
        start = period if not flip_one else 0
        base = counter_base(key, np.uint64(start), np.uint64(SLOW_BITS))
        for j in range(num_slow):
            pattern[j] = _bit(base, j)
        pattern_period = start
    for p in range(pattern_period + 1, period + 1):
        if num_slow:
            base = counter_base(key, np.uint64(p), np.uint64(FLIPPED_BIT))
            j = counter_element(base, np.uint64(0)) % np.uint64(num_slow)
            pattern[j] = np.float32(1.0) - pattern[j]
    return period


@numba.njit(cache=True, inline="always")
def example_index(fast_base: np.uint64, offset: int, num_fast: int) -> np.uint64:
    """The fast bits of example `offset` of a period (whose FAST_BITS draw has base `fast_base`) as
    an integer: fast input b is bit b. (One 32-bit element per example: at most 32 fast bits.)"""
    word = counter_element(fast_base, np.uint64(offset))
    return word & np.uint64((1 << num_fast) - 1)


@numba.njit(cache=True)
def target_table(
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, threshold: np.ndarray,
    pattern: np.ndarray, num_fast: int, table: np.ndarray,
) -> None:  # fmt: skip
    """The target of every fast-bit pattern of a period (table[index], index as `example_index`).
    Exact: the target's arithmetic is on small integers, so the order of its sums does not matter."""
    hidden, inputs = w1.shape
    num_slow = inputs - num_fast
    for index in range(table.shape[0]):
        y = b2[0]
        for i in range(hidden):
            pre = b1[i]
            for j in range(num_slow):
                pre += w1[i, j] * pattern[j]
            for b in range(num_fast):
                pre += w1[i, num_slow + b] * np.float32((index >> b) & 1)
            if pre > threshold[i]:
                y += w2[i]
        table[index] = y


@numba.njit(cache=True, inline="always")
def example_target(
    fast_base: np.uint64, offset: int, num_fast: int, table: np.ndarray,
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, threshold: np.ndarray,
    x: np.ndarray,
) -> np.float32:  # fmt: skip
    """Example `offset` of a period: writes its fast bits into x (after the slow bits, which the
    caller has written) and returns its target, from the period's `table` (`target_table`) when
    there are at most TABLE_BITS fast bits, else computed. The stream serves examples through it;
    the regression kernel writes the same steps out (`regression_kernel.advance_seeds`: its seven
    array arguments cost more there than the example)."""
    num_slow = x.shape[0] - num_fast
    index = example_index(fast_base, offset, num_fast)
    for b in range(num_fast):
        x[num_slow + b] = np.float32((index >> np.uint64(b)) & np.uint64(1))
    if num_fast <= TABLE_BITS:
        return table[index]
    return direct_target(w1, b1, w2, b2, threshold, x)


@numba.njit(cache=True)
def _fill_period(
    key: np.uint64, period: int, first: int, count: int, pattern: np.ndarray,
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, threshold: np.ndarray,
    x: np.ndarray, y: np.ndarray,
) -> None:  # fmt: skip
    """Examples first … first + count − 1 of period `period` (slow bits `pattern`) into x, y."""
    num_slow = pattern.shape[0]
    num_fast = x.shape[1] - num_slow
    fast_base = counter_base(key, np.uint64(period), np.uint64(FAST_BITS))
    table = np.empty(1 << num_fast if num_fast <= TABLE_BITS else 0, dtype=np.float32)
    if num_fast <= TABLE_BITS:
        target_table(w1, b1, w2, b2, threshold, pattern, num_fast, table)
    for t in range(count):
        for j in range(num_slow):
            x[t, j] = pattern[j]
        y[t] = example_target(fast_base, first + t, num_fast, table, w1, b1, w2, b2, threshold, x[t])


@numba.njit(cache=True)
def direct_target(w1, b1, w2, b2, threshold, x) -> np.float32:
    y = b2[0]
    for i in range(w1.shape[0]):
        pre = b1[i]
        for j in range(w1.shape[1]):
            pre += w1[i, j] * x[j]
        if pre > threshold[i]:
            y += w2[i]
    return y


class RegressionStream:
    """Serves run `seed`'s stream in order, any number of examples at a time, on the CPU.

    Its state is the position and the slow bits of one period (`pattern`, of period
    `pattern_period`), which `flip_one` derives the next period's from; the examples themselves are
    regenerated from the counter hash when needed."""

    def __init__(self, settings: RegressionSettings, seed: int) -> None:
        if settings.num_fast_bits > 32:
            raise ValueError(
                f"at most 32 fast bits (num_inputs − num_slow_bits), got {settings.num_fast_bits}"
            )
        self.settings = settings
        self.seed = seed
        self.key = stream_key(seed)
        self.target = ThresholdTarget(settings, seed)
        self.position = 0
        self.pattern = np.zeros(settings.num_slow_bits, dtype=np.float32)
        self.pattern_period = -1  # no period drawn yet

    def take(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `count` examples: inputs (count, num_inputs) and targets (count, 1)."""
        s = self.settings
        x = np.empty((max(count, 0), s.num_inputs), dtype=np.float32)
        y = np.empty(max(count, 0), dtype=np.float32)
        done = 0
        while done < count:
            period, offset = divmod(self.position, s.flip_after)
            chunk = min(count - done, s.flip_after - offset)
            self.pattern_period = advance_pattern(
                np.uint64(self.key), self.pattern, self.pattern_period, period, s.bit_change == "flip_one"
            )
            _fill_period(
                np.uint64(self.key), period, offset, chunk, self.pattern, *self.target.arrays(),
                x[done : done + chunk], y[done : done + chunk],
            )  # fmt: skip
            self.position += chunk
            done += chunk
        return torch.from_numpy(x), torch.from_numpy(y).unsqueeze(1)

    def peek(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `count` examples, leaving the stream where it is."""
        saved = self.state_dict()
        try:
            return self.take(count)
        finally:
            self.load_state_dict(saved)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": GENERATOR,
            "position": self.position,
            "pattern": torch.from_numpy(self.pattern.copy()),
            "pattern_period": self.pattern_period,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") != GENERATOR:
            raise ValueError(
                "this checkpoint's regression stream was drawn by the Mersenne-twister generator of "
                f"before 2026-12-06, not {GENERATOR!r} (issue 16 changed every regression stream): "
                "it cannot be continued on the same examples; start the run afresh"
            )
        self.position = int(state["position"])
        self.pattern = np.asarray(state["pattern"], dtype=np.float32).copy()
        self.pattern_period = int(state["pattern_period"])
