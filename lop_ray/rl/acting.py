"""The runners' copy of the Gaussian policy, in numpy: forward, sample, log-probability.

It computes what `lop_ray.nets.policy.GaussianPolicy` computes (a test pins the two together), from
that policy's weights. Numpy rather than torch because acting runs one tiny batch (the runner's
envs) per env step: torch's per-op dispatch costs several times the arithmetic there, and acting is
most of a PPO iteration's wall time.
"""

from __future__ import annotations

import math

import numpy as np

_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0, out=x),
    "tanh": lambda x: np.tanh(x, out=x),
}
ACTING_ACTIVATIONS = tuple(_ACTIVATIONS)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class ActingPolicy:
    def __init__(self, activation: str = "relu") -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(f"runners act with {list(_ACTIVATIONS)} networks, not {activation!r}")
        self.activation = _ACTIVATIONS[activation]
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        self.log_std = np.zeros(0, dtype=np.float32)

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Weights from `GaussianPolicy.state_dict()` as numpy arrays (`layers.i.weight`, ...)."""
        count = len([key for key in state if key.endswith(".weight")])
        self.weights = [
            np.ascontiguousarray(state[f"layers.{i}.weight"].T, dtype=np.float32) for i in range(count)
        ]
        self.biases = [np.asarray(state[f"layers.{i}.bias"], dtype=np.float32) for i in range(count)]
        self.log_std = np.asarray(state["log_std"], dtype=np.float32)

    def mean(self, obs: np.ndarray) -> np.ndarray:
        h = obs
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ weight
            h += bias
            if index < last:
                self.activation(h)
        return h

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions mean + std·noise and their log-probabilities (summed over action dimensions)."""
        mean = self.mean(obs)
        actions = mean + np.exp(self.log_std) * noise
        log_probs = (-0.5 * np.square(noise) - self.log_std - _HALF_LOG_2PI).sum(axis=-1)
        return actions.astype(np.float32), log_probs.astype(np.float32)
