"""One compiled call for the forward and backward pass of S small one-hidden-layer MLPs on one
example each (slowly-changing regression: 20 → 5 → 1, squared error).

At this size a step is nothing but dispatch: the PyTorch path is ~20 kernels of ~100 multiply-adds
per seed each, and every kernel costs its few microseconds of dispatch whatever it computes. A
numba loop over seeds does the same arithmetic in one call, so S seeds cost about one call plus
S × ~600 flops. Every seed runs the same loop on its own slice and nothing mixes seeds, so a seed's
numbers do not depend on the batch it runs in. Sums run in index order in float32, as written
below; PyTorch's vectorised reductions add in another order, so this path and the PyTorch path agree
to rounding, not bit for bit (tests/test_seed_batched.py states the tolerance).
"""

from __future__ import annotations

import numba
import numpy as np

# activation codes of the compiled loop; derivatives as lop_ray.nets.mlp_gradients.DERIVATIVES
ACTIVATION_CODES = {"relu": 0, "tanh": 1, "sigmoid": 2, "elu": 3, "leaky_relu": 4, "swish": 5}

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_LEAKY_SLOPE = np.float32(0.01)


@numba.njit(cache=True, inline="always")
def _sigmoid(z: np.float32) -> np.float32:
    return _ONE / (_ONE + np.exp(-z))


@numba.njit(cache=True, inline="always")
def _activate(code: int, z: np.float32) -> np.float32:
    if code == 0:
        return z if z > _ZERO else _ZERO
    if code == 1:
        return np.tanh(z)
    if code == 2:
        return _sigmoid(z)
    if code == 3:
        return z if z > _ZERO else np.expm1(z)
    if code == 4:
        return z if z > _ZERO else z * _LEAKY_SLOPE
    return z * _sigmoid(z)


@numba.njit(cache=True, inline="always")
def _derivative(code: int, z: np.float32, a: np.float32) -> np.float32:
    if code == 0:
        return _ONE if a > _ZERO else _ZERO
    if code == 1:
        return _ONE - a * a
    if code == 2:
        return a * (_ONE - a)
    if code == 3:
        return _ONE if z > _ZERO else a + _ONE
    if code == 4:
        return _ONE if z > _ZERO else _LEAKY_SLOPE
    s = _sigmoid(z)
    return s * (_ONE + z * (_ONE - s))


@numba.njit(cache=True, nogil=True)
def one_hidden_layer_squared_error(
    x: np.ndarray,  # (S, in)
    target: np.ndarray,  # (S,)
    w1: np.ndarray,  # (S, hidden, in)
    b1: np.ndarray,  # (S, hidden)
    w2: np.ndarray,  # (S, 1, hidden)
    b2: np.ndarray,  # (S, 1)
    activation: int,
    loss: np.ndarray,  # (S,) out: squared error per seed
    output: np.ndarray,  # (S, 1) out
    grad_w1: np.ndarray,  # out, like w1
    grad_b1: np.ndarray,  # out, like b1
    grad_w2: np.ndarray,  # out, like w2
    grad_b2: np.ndarray,  # out, like b2
    hidden: np.ndarray,  # (S, hidden) out: activations
) -> None:
    seeds, width, inputs = w1.shape
    pre = np.empty(width, dtype=np.float32)
    for s in range(seeds):
        y = b2[s, 0]
        out_sum = _ZERO
        for k in range(width):
            z = _ZERO
            for j in range(inputs):
                z += w1[s, k, j] * x[s, j]
            z += b1[s, k]
            pre[k] = z
            a = _activate(activation, z)
            hidden[s, k] = a
            out_sum += w2[s, 0, k] * a
        y = out_sum + y
        output[s, 0] = y
        diff = y - target[s]
        loss[s] = diff * diff
        delta = diff + diff  # d (y − t)² / dy
        grad_b2[s, 0] = delta
        for k in range(width):
            grad_w2[s, 0, k] = delta * hidden[s, k]
            back = delta * w2[s, 0, k] * _derivative(activation, pre[k], hidden[s, k])
            grad_b1[s, k] = back
            for j in range(inputs):
                grad_w1[s, k, j] = back * x[s, j]
