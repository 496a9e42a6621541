"""Elementwise transcendentals over a leading seed axis whose results do not depend on S.

PyTorch's CPU kernels compute a tensor's elements in vector lanes and its last few in a scalar loop,
whose results for exp, log, pow or sigmoid differ in the last bit; where seed s's elements fall
depends on how many seeds share the tensor. Arithmetic (+, −, ×, ÷, √) is exact in both, so only the
transcendentals need this.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

_LANES = 64  # a multiple of twice every CPU vector width: no element falls to the scalar tail loop
_ONE_CHUNK = 32768  # PyTorch's grain size: an op on fewer elements runs as one loop in one thread


def per_seed_elementwise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn` (an elementwise transcendental: exp, pow, sigmoid) of `x` (S, …), seed s's values the
    same whatever S is. Each seed's row is padded to a whole number of vector blocks: all seeds in one
    call while that is one loop, else seed by seed (each row then the same call as alone). Autograd
    flows through (padding and slicing are differentiable)."""
    seeds = x.shape[0]
    flat = x.reshape(seeds, -1)
    count = flat.shape[1]
    width = -(-count // _LANES) * _LANES
    padded = F.pad(flat, (0, width - count)) if width != count else flat
    if padded.numel() <= _ONE_CHUNK:
        out = fn(padded)
    else:
        out = torch.stack([fn(row) for row in padded])
    return out[:, :count].reshape(x.shape)
