"""Counter-based random numbers for seed-batched learners.

A seed-batched learner advances S seeds in one step, and each seed must draw exactly what it would
draw alone (S = 1): a shared torch.Generator cannot give that (the draws of seed s would depend on S
and on s's position), and S per-seed generators mean S calls per step, which is the overhead
batching removes. So per-step noise is a pure function of (seed key, counter, stream, element),
computed for all seeds at once: a 32-bit integer hash (Wellons' "lowbias32") applied in int64
arithmetic that never overflows (products split into 16-bit halves), identical on every device.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x · constant) mod 2³² for x in [0, 2³²), without leaving int64's range."""
    low, high = constant & 0xFFFF, constant >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijection of [0, 2³²) with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


@numba.njit(cache=True, inline="always")
def _scalar_hash32(x: np.uint64) -> np.uint64:
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(_MASK32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(_MASK32)
    return x ^ (x >> np.uint64(16))


@numba.njit(cache=True, inline="always")
def counter_base(key: np.uint64, counter: np.uint64, stream: np.uint64) -> np.uint64:
    """The hash of (key, counter, stream) that every element of that draw starts from."""
    mask = np.uint64(_MASK32)
    stream_term = np.uint64(stream) * np.uint64(0x85EBCA77)
    salt = _scalar_hash32((np.uint64(counter) * np.uint64(0x9E3779B1) + stream_term) & mask)
    return _scalar_hash32(np.uint64(key) ^ salt)


@numba.njit(cache=True, inline="always")
def counter_element(base: np.uint64, element: np.uint64) -> np.uint64:
    """Element `element` of the draw whose `counter_base` is `base`: 32 random bits."""
    value = _scalar_hash32((base + np.uint64(element)) & np.uint64(_MASK32))
    return _scalar_hash32(value ^ base)


@numba.njit(cache=True, inline="always")
def counter_uniform(base: np.uint64, element: np.uint64) -> float:
    """`uniform`'s float64 value of that element, in (0, 1). (Through int64: the value is below
    2³², and x86 converts a signed integer in one instruction, an unsigned 64-bit one in ~20 ns.)"""
    return (np.float64(np.int64(counter_element(base, element))) + 0.5) / 4294967296.0


_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_C = (
    4.16666666666666019037e-02,
    -1.38888888888741095749e-03,
    2.48015872894767294178e-05,
    -2.75573143513906633035e-07,
    2.08757232129817482790e-09,
    -1.13596475577881948265e-11,
)
_S = (
    -1.66666666666666324348e-01,
    8.33333333332248946124e-03,
    -1.98412698298579493134e-04,
    2.75573137070700676789e-06,
    -2.50507602534068634195e-08,
    1.58969099521155010221e-10,
)
_SQRT_HALF = 0.70710678118654752440
_TWO_PI = 2.0 * math.pi
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52


@numba.njit(cache=True, error_model="numpy", inline="always")
def compiled_normal_rows(
    key: np.uint64, counters: np.ndarray, stream: int, count: int, out: np.ndarray, scratch: np.ndarray
) -> None:
    """`normal`'s float32 values of one seed for several counters (rows of `out`, (≥ rows, count)):
    row r is `normal(key, counters[r], stream, count)`. `scratch` is (5, ≥ rows · ⌈count/2⌉) float64.

    Box–Muller gives two normals per pair of uniforms: pair e makes element e (r·cos θ) and, in the
    row's second half, element ⌈count/2⌉ + e (r·sin θ). libm's log, sin and cos are scalar calls
    (~25 ns a normal); these are fdlibm's (musl's) log and sin/cos kernels written as branch-free
    loops that LLVM vectorises, accurate to a few float64 ulps, so after rounding to float32 the
    values are those of PyTorch's float64 ops (`_torch_normal`, measured equal on 2M of 2M,
    tests/test_seed_batched.py). Each transform loop runs over all rows' pairs at once: a row's
    ~56 pairs alone would leave most of a vector loop to its scalar remainder."""
    rows = counters.shape[0]
    half = (count + 1) // 2
    pairs = rows * half
    w = scratch[0, :pairs]  # u1 · 2³², then its mantissa's bits
    bits = w.view(np.int64)
    m = scratch[1, :pairs]
    mbits = m.view(np.int64)
    radius = scratch[2, :pairs]
    angle = scratch[3, :pairs]  # u2
    sines = scratch[4, :pairs]
    for r in range(rows):
        base1 = counter_base(key, np.uint64(counters[r]), np.uint64(2 * stream))
        base2 = counter_base(key, np.uint64(counters[r]), np.uint64(2 * stream + 1))
        row = r * half
        for e in range(half):
            w[row + e] = np.float64(np.int64(counter_element(base1, np.uint64(e)))) + 0.5
        for e in range(half):
            angle[row + e] = counter_uniform(base2, np.uint64(e))
    for e in range(pairs):
        mbits[e] = (bits[e] & _MANTISSA) | _ONE_BITS  # mantissa in [1, 2)
    for e in range(pairs):  # −2 ln u1
        k = np.float64((bits[e] >> 52) - 1023 - 32)
        x = m[e]
        big = x > 2.0 * _SQRT_HALF
        x = x * 0.5 if big else x
        k = k + 1.0 if big else k
        f = x - 1.0
        hfsq = 0.5 * f * f
        s = f / (2.0 + f)
        z = s * s
        ww = z * z
        t1 = ww * (_LG[1] + ww * (_LG[3] + ww * _LG[5]))
        t2 = z * (_LG[0] + ww * (_LG[2] + ww * (_LG[4] + ww * _LG[6])))
        r = t2 + t1
        radius[e] = -2.0 * (k * _LN2_HI - ((hfsq - (s * (hfsq + r) + k * _LN2_LO)) - f))
    for e in range(pairs):  # its own loop: with the log's, it kept that loop scalar
        radius[e] = math.sqrt(radius[e])
    for e in range(pairs):
        u = angle[e]
        v = u - math.floor(u + 0.5)  # 2πu ≡ 2πv, v in [−½, ½]
        a = abs(v)
        negate_cosine = a > 0.25
        b = 0.5 - a if negate_cosine else a  # cos(2πa) = −cos(2π(½ − a)), sin the same
        swap = b > 0.125
        c = 0.25 - b if swap else b  # cos(2πb) = sin(2π(¼ − b)) and the other way round
        x = _TWO_PI * c
        z = x * x
        ww = z * z
        rc = z * (_C[0] + z * (_C[1] + z * _C[2])) + ww * ww * (_C[3] + z * (_C[4] + z * _C[5]))
        hz = 0.5 * z
        wc = 1.0 - hz
        cos_x = wc + (((1.0 - wc) - hz) + z * rc)
        rs = _S[1] + z * (_S[2] + z * _S[3]) + z * ww * (_S[4] + z * _S[5])
        sin_x = x + z * x * (_S[0] + z * rs)
        cosine = sin_x if swap else cos_x
        sine = cos_x if swap else sin_x
        cosine = -cosine if negate_cosine else cosine
        sine = -sine if v < 0.0 else sine
        angle[e] = radius[e] * cosine
        sines[e] = radius[e] * sine
    rest = count - half
    for r in range(rows):
        row = r * half
        for e in range(half):
            out[r, e] = np.float32(angle[row + e])
        for e in range(rest):
            out[r, half + e] = np.float32(sines[row + e])


@numba.njit(cache=True)
def _compiled_normals(keys: np.ndarray, counters: np.ndarray, stream: int, out: np.ndarray) -> None:
    """`normal` on the CPU for every seed, into `out` (S, K, count): the compiled loops' own values,
    so that the regression kernel and the PyTorch learners draw the same normals bit for bit."""
    count = out.shape[2]
    scratch = np.empty((5, counters.shape[0] * ((count + 1) // 2)), dtype=np.float64)
    for s in range(keys.shape[0]):
        compiled_normal_rows(np.uint64(keys[s]), counters, stream, count, out[s], scratch)


@numba.njit(cache=True)
def _compiled_random_bits(keys: np.ndarray, counters: np.ndarray, stream: int, out: np.ndarray) -> None:
    """`random_bits` on the CPU: the same hash on each (key, counter, element), in uint64 (products
    of two 32-bit values fit), written into `out` (S, K, count). Compiled loops elsewhere (the
    regression kernel) call the same `counter_base` / `counter_element`, so they draw these values."""
    for k in range(counters.shape[0]):
        for s in range(keys.shape[0]):
            base = counter_base(np.uint64(keys[s]), np.uint64(counters[k]), np.uint64(stream))
            for e in range(out.shape[2]):
                out[s, k, e] = np.int64(counter_element(base, np.uint64(e)))


def seed_keys(seeds: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One 32-bit key per seed (int64 tensor of shape (S,))."""
    from lop_ray.data.seeding import LEARNER, derived_seed

    return torch.tensor([derived_seed(seed, LEARNER, 7) & _MASK32 for seed in seeds], device=device)


def random_bits(keys: torch.Tensor, counter: int | torch.Tensor, stream: int, count: int) -> torch.Tensor:
    """(S, count) independent 32-bit values, a function of (key, counter, stream, element) only;
    with a 1-D tensor of K counters, (S, K, count): the same values as K calls."""
    counters = torch.as_tensor(counter, device=keys.device)
    if keys.device.type == "cpu":  # the same integers from one compiled loop (~60 tensor ops here)
        bits = torch.empty((len(keys), counters.numel(), count), dtype=torch.int64)
        _compiled_random_bits(keys.numpy(), counters.reshape(-1).numpy(), stream, bits.numpy())
        return bits.reshape(len(keys), *counters.shape, count)
    salt = hash32((counters * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32)
    base = hash32(keys.reshape(-1, *([1] * counters.dim())) ^ salt).unsqueeze(-1)
    element = torch.arange(count, device=keys.device)
    return hash32(hash32((base + element) & _MASK32) ^ base)


def uniform(keys: torch.Tensor, counter, stream: int, count: int, dtype=torch.float32) -> torch.Tensor:
    """(S, count) uniforms in (0, 1); (S, K, count) for K counters."""
    return (random_bits(keys, counter, stream, count).to(torch.float64) + 0.5).div_(2.0**32).to(dtype)


def normal(keys: torch.Tensor, counter, stream: int, count: int, dtype=torch.float32) -> torch.Tensor:
    """(S, count) standard normals; (S, K, count) for K counters. Box–Muller over two independent
    uniform streams (2·stream, 2·stream + 1) of ⌈count/2⌉ pairs: pair e gives element e its
    r·cos θ and element ⌈count/2⌉ + e its r·sin θ, so a draw costs half the hashes and logs of one
    pair per value. The CPU computes them in the compiled loops (`compiled_normal_rows`), a GPU with
    PyTorch's ops (`_torch_normal`): after rounding to float32 the same values."""
    counters = torch.as_tensor(counter, device=keys.device)
    if keys.device.type == "cpu" and dtype == torch.float32:
        values = torch.empty((len(keys), counters.numel(), count), dtype=torch.float32)
        _compiled_normals(keys.numpy(), counters.reshape(-1).numpy(), stream, values.numpy())
        return values.reshape(len(keys), *counters.shape, count)
    return _torch_normal(keys, counters, stream, count).to(dtype)


def _torch_normal(keys: torch.Tensor, counter, stream: int, count: int) -> torch.Tensor:
    """`normal` in float64 through PyTorch's log, cos and sin (any device)."""
    half = (count + 1) // 2
    u1 = uniform(keys, counter, 2 * stream, half, torch.float64)
    u2 = uniform(keys, counter, 2 * stream + 1, half, torch.float64)
    radius = (-2.0 * u1.log()).sqrt()
    angle = 2.0 * math.pi * u2
    return torch.cat([radius * torch.cos(angle), (radius * torch.sin(angle))[..., : count - half]], dim=-1)


class CounterNoise:
    """Per-step draws for every seed, generated a block of steps at a time.

    `at(step)` is (S, count) values that depend only on (key, step, stream), exactly those of
    `normal`/`uniform` with counter = step: a block of `block_steps` consecutive steps is drawn in
    one call and sliced step by step, so a step costs a slice instead of the hash's few dozen tensor
    operations. Resuming at any step regenerates that step's block, so nothing needs saving.
    """

    def __init__(
        self,
        keys: torch.Tensor,
        stream: int,
        count: int,
        kind: str = "normal",
        dtype: torch.dtype = torch.float32,
        block_values: int = 2**20,
    ) -> None:
        if kind not in ("normal", "uniform"):
            raise ValueError(f"kind is 'normal' or 'uniform', got {kind!r}")
        self.keys = keys
        self.stream = stream
        self.count = count
        self.draw = normal if kind == "normal" else uniform
        self.dtype = dtype
        self.block_steps = max(1, min(1024, block_values // max(1, count * len(keys))))
        self._block_index = -1
        self._block: torch.Tensor | None = None

    def at(self, step: int) -> torch.Tensor:
        block_index, offset = divmod(step, self.block_steps)
        if block_index != self._block_index:
            first = block_index * self.block_steps
            steps = torch.arange(first, first + self.block_steps, device=self.keys.device)
            self._block = self.draw(self.keys, steps, self.stream, self.count, self.dtype)
            self._block_index = block_index
        return self._block[:, offset]
