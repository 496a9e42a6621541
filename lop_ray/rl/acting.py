"""The runners' copy of the Gaussian policy, in numpy: forward, sample, log-probability.

It computes what `lop_ray.nets.policy.GaussianPolicy` computes (a test pins the two together), from
that policy's weights. Numpy rather than torch because acting runs one tiny batch (the runner's
envs) per env step: torch's per-op dispatch costs several times the arithmetic there.

The weights hold S seeds ((S, out, in)); a runner's envs belong to seeds, so each row of a call
names its seed (`load(..., rows)`), and all rows (every seed's envs) are one stacked product per
layer. Each row is its own vector-matrix product, so an env's actions do not depend on which other
envs (of its seed or of others) share the call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
        self.weights: list[np.ndarray] = []  # per layer (rows, in, out)
        self.biases: list[np.ndarray] = []  # per layer (rows, 1, out)
        self.log_std = np.zeros((0, 0), dtype=np.float32)  # (rows, actions)
        self.std = self.log_std
        self.crelu = False
        self.norms: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen_layers = 0
        self.frozen: list[tuple] = []

    def load(self, state: dict[str, np.ndarray], rows: Sequence[int] | None = None) -> None:
        """Weights from `GaussianPolicy.state_dict()` as numpy arrays (`layers.i.weight` (S, out, in),
        ...); row r of later calls acts with seed `rows[r]` (default: S rows, one per seed)."""
        count = len([key for key in state if key.startswith("layers.") and key.endswith(".weight")])
        seeds = state["layers.0.weight"].shape[0]
        index = np.arange(seeds) if rows is None else np.asarray(rows, dtype=np.int64)
        self.weights, self.biases = _layers(state, "layers", count, index)
        self.log_std = np.asarray(state["log_std"], dtype=np.float32)[index]
        self.crelu = bool(state.get("crelu", False))
        # layer normalisation's gain and bias of each hidden layer, if the policy has it
        self.norms = [
            (_vector(state, f"norms.{i}.weight", index), _vector(state, f"norms.{i}.bias", index))
            for i in range(count - 1)
            if f"norms.{i}.weight" in state
        ]
        # plasticity injection's frozen heads: [(old, initial or None)], each as `weights`, `biases`
        self.frozen_layers = int(state.get("frozen.layers", 0))
        self.frozen = []
        while f"frozen.{len(self.frozen)}.old.0.weight" in state:
            prefix = f"frozen.{len(self.frozen)}"
            old = list(zip(*_layers(state, f"{prefix}.old", self.frozen_layers, index), strict=True))
            initial = None
            if f"{prefix}.initial.0.weight" in state:
                initial = list(
                    zip(*_layers(state, f"{prefix}.initial", self.frozen_layers, index), strict=True)
                )
            self.frozen.append((old, initial))
        # row by row: numpy's exp computes an array's last few elements apart from the rest
        self.std = np.stack([np.exp(row) for row in self.log_std])

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """(rows, obs) → (rows, actions)."""
        h = obs[:, None, :]
        last = len(self.weights) - 1
        head_input = None
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if self.frozen and index == len(self.weights) - self.frozen_layers:
                head_input = h
            h = np.matmul(h, weight)
            h += bias
            if index < last:
                if self.norms:
                    h = _layer_norm(h, *self.norms[index])
                h = _crelu(h) if self.crelu else self.activation(h)
        for old, initial in self.frozen:  # the frozen heads' terms, as the learner adds them
            h += self._head(old, head_input)
            if initial is not None:
                h -= self._head(initial, head_input)
        return h[:, 0, :]

    def _head(self, layers: list[tuple[np.ndarray, np.ndarray]], h: np.ndarray) -> np.ndarray:
        """A frozen head: a plain stack (a policy with norms or CReLU injects its output layer only)."""
        for index, (weight, bias) in enumerate(layers):
            h = np.matmul(h, weight)
            h += bias
            if index < len(layers) - 1:
                self.activation(h)
        return h

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actions mean + std·noise and their log-probabilities (summed over action dimensions), for
        (rows, obs) observations and (rows, actions) standard normal noise."""
        mean = self.mean(obs)
        actions = mean + self.std * noise
        log_probs = (-0.5 * np.square(noise) - self.log_std - _HALF_LOG_2PI).sum(axis=-1)
        return actions.astype(np.float32), log_probs.astype(np.float32)


def _layers(
    state: dict[str, np.ndarray], prefix: str, count: int, index: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`prefix`.i.weight (S, out, in) and `prefix`.i.bias (S, out) of layers i < count, each row the
    seed `index` names: weights (rows, in, out), contiguous for the row-by-row products, and biases
    (rows, 1, out)."""
    weights = [
        np.ascontiguousarray(np.asarray(state[f"{prefix}.{i}.weight"], np.float32)[index].transpose(0, 2, 1))
        for i in range(count)
    ]
    biases = [_vector(state, f"{prefix}.{i}.bias", index) for i in range(count)]
    return weights, biases


def _vector(state: dict[str, np.ndarray], key: str, index: np.ndarray) -> np.ndarray:
    """A per-seed vector (S, n) as (rows, 1, n), each row the seed `index` names."""
    return np.asarray(state[key], np.float32)[index][:, None, :]


def _layer_norm(h: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Each row's units normalised (`SeedLayerNorm`: biased variance, ε = 1e-5), then gain and bias."""
    centred = h - h.mean(axis=-1, keepdims=True)
    variance = np.square(centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + eps) * gain + bias


def _crelu(h: np.ndarray) -> np.ndarray:
    """ReLU(h) and ReLU(−h) of each unit, interleaved (`lop_ray.nets.activations.crelu`)."""
    return np.stack((np.maximum(h, 0.0), np.maximum(-h, 0.0)), axis=-1).reshape(*h.shape[:-1], -1)
