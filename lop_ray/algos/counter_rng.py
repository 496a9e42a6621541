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


def seed_keys(seeds: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One 32-bit key per seed (int64 tensor of shape (S,))."""
    from lop_ray.data.seeding import LEARNER, derived_seed

    return torch.tensor([derived_seed(seed, LEARNER, 7) & _MASK32 for seed in seeds], device=device)


def random_bits(keys: torch.Tensor, counter: int, stream: int, count: int) -> torch.Tensor:
    """(S, count) independent 32-bit values, a function of (key, counter, stream, element) only."""
    salt = hash32(torch.tensor((counter * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32, device=keys.device))
    base = hash32(keys ^ salt)
    element = torch.arange(count, device=keys.device)
    return hash32(hash32((base[:, None] + element) & _MASK32) ^ base[:, None])


def uniform(keys: torch.Tensor, counter: int, stream: int, count: int, dtype=torch.float32) -> torch.Tensor:
    """(S, count) uniforms in (0, 1)."""
    return (random_bits(keys, counter, stream, count).to(torch.float64) + 0.5).div_(2.0**32).to(dtype)


def normal(keys: torch.Tensor, counter: int, stream: int, count: int, dtype=torch.float32) -> torch.Tensor:
    """(S, count) standard normals (Box–Muller over two independent uniform streams)."""
    u1 = uniform(keys, counter, 2 * stream, count, torch.float64)
    u2 = uniform(keys, counter, 2 * stream + 1, count, torch.float64)
    return ((-2.0 * u1.log()).sqrt() * torch.cos(2.0 * math.pi * u2)).to(dtype)
