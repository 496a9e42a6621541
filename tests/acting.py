"""What the env runners' numpy policy should compute: the torch policy's means for rows of seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lop_ray.nets.policy import GaussianPolicy
from lop_ray.rl.acting import ActingPolicy
from lop_ray.rl.runner import policy_weights


def assert_runners_act_as(policy: GaussianPolicy, obs: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """The runners' copy of `policy`, row r acting for seed rows[r], gives the torch policy's means
    on `obs` (rows, obs_dim) to float rounding; returns those means."""
    acting = ActingPolicy()
    acting.load(policy_weights(policy), rows=rows)
    with torch.no_grad():
        mean, _ = policy(torch.from_numpy(obs)[None].expand(policy.num_seeds, -1, -1))
    expected = np.stack([mean[seed, row].numpy() for row, seed in enumerate(rows)])
    np.testing.assert_allclose(acting.mean(obs), expected, rtol=1e-5, atol=1e-5)
    return expected
