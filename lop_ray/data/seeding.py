"""The seeding rule (spec/problems.md): a run index fixes everything random in the run.

Each source of randomness gets its own generator, derived from the run seed and a purpose tag through
NumPy's SeedSequence, so the data stream of run r is the same whatever the algorithm draws, and a
period of the stream can be regenerated alone (which makes resuming cheap and chunking irrelevant).
"""

from __future__ import annotations

import numpy as np
import torch

TARGET = 1
STREAM = 2
LEARNER = 3


def derived_seed(*key: int) -> int:
    """A 63-bit seed that depends only on `key`."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*key: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*key))
