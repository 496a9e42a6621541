"""Continual backprop's per-step unit statistics for S small seed-batched layers in one compiled call.

On slowly-changing regression's 20 → 5 → 1 network the statistics (ages, decayed utilities, running
mean activations, the replacement count) are ~80 PyTorch calls on (S, 5) tensors, each a few
microseconds of dispatch for a few hundred flops: three times the whole BP step at S = 100
(docs/performance.md). A numba loop over seeds and units does the same arithmetic in one call.

Each seed runs the same loop on its own slice and nothing mixes seeds, so a seed's numbers do not
depend on the batch it runs in. Sums run in index order in float32, as written; PyTorch's vectorised
reductions add in another order, so this path and `ContinualBackprop`'s PyTorch path
agree to rounding (tests/test_seed_batched.py states the tolerance) and choose the same units.
"""

from __future__ import annotations

import numba
import numpy as np

# utility codes of the compiled loop (lop_ray.algos.cbp.UTIL_TYPES)
UTILITY_CODES = {
    "contribution": 0,
    "zero_contribution": 1,
    "adaptation": 2,
    "adaptable_contribution": 3,
    "feature_by_input": 4,
    "weight": 5,
    "random": 6,
}

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@numba.njit(cache=True, nogil=True, error_model="numpy")  # x / 0 is inf, as in PyTorch
def update_unit_statistics(
    h: np.ndarray,  # (S, B, W) float32: the layer's activations this step
    incoming_weight: np.ndarray,  # (S, W, F) float32
    outgoing_weight: np.ndarray,  # (S, O, W) float32
    utility: np.ndarray,  # (S, W) float32, in/out: the decayed utility
    bias_corrected_utility: np.ndarray,  # (S, W) float32, out
    mean_activation: np.ndarray,  # (S, W) float32, in/out: the decayed mean activation
    age: np.ndarray,  # (S, W) int64, in/out
    accumulated: np.ndarray,  # (S,) float64, in/out: the accumulate rule's fractional units
    random_utility: np.ndarray,  # (S, W) float32: this step's utilities under util code 6
    draws: np.ndarray,  # (S,) float64: this step's uniforms of the probabilistic rule
    eta: float,
    util_code: int,
    maturity_threshold: int,
    replacement_rate: float,
    eligible_base: bool,  # ρ × eligible units (True) or ρ × width (False)
    accumulate: bool,
    mean_estimate: np.ndarray,  # (S, W) float32, out: the bias-corrected mean activation
    counts: np.ndarray,  # (S,) int64, out: units each seed replaces this step
    saturated_age: int,  # `saturation_age(eta)`
) -> None:
    for s in range(h.shape[0]):
        seed_unit_statistics(
            s, h, incoming_weight, outgoing_weight, utility, bias_corrected_utility, mean_activation,
            age, accumulated, random_utility, draws, eta, util_code, maturity_threshold,
            replacement_rate, eligible_base, accumulate, mean_estimate, counts, saturated_age,
        )  # fmt: skip


@numba.njit(cache=True)
def saturation_age(eta: float) -> int:
    """The age from which the bias correction 1 − η^age is exactly 1 in float32 (η^age ≤ 2⁻²⁵,
    below half an ulp of 1), so that old units skip the power: each step's statistics compute one
    per unit otherwise, the largest cost of the step. Checked for the next 10⁵ ages, in case the
    float32 power were not monotone; -1: no such age (η = 0 is 1 from age 1; the check fails)."""
    decay = np.float32(eta)
    age = 1
    while _ONE - np.float32(decay ** np.float32(age)) != _ONE:
        age += 1
        if age > 1 << 26:
            return -1
    for later in range(age, age + 100_000):
        if _ONE - np.float32(decay ** np.float32(later)) != _ONE:
            return -1
    return age


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def seed_unit_statistics(
    s, h, incoming_weight, outgoing_weight, utility, bias_corrected_utility, mean_activation,
    age, accumulated, random_utility, draws, eta, util_code, maturity_threshold,
    replacement_rate, eligible_base, accumulate, mean_estimate, counts, saturated_age,
) -> None:  # fmt: skip
    """`update_unit_statistics` of seed `s` alone (the compiled regression learner calls it per
    seed and step, on the same arrays)."""
    _, batch, width = h.shape
    fan_in = incoming_weight.shape[2]
    fan_out = outgoing_weight.shape[1]
    decay = np.float32(eta)
    keep = np.float32(1.0 - eta)  # 1 − η, computed in float64 then rounded, as PyTorch's alpha is
    batch_size = np.float32(batch)
    eligible = 0
    for k in range(width):
        age[s, k] += 1
        if 0 <= saturated_age <= age[s, k]:
            bias_correction = _ONE
        else:
            bias_correction = _ONE - np.float32(np.float32(eta) ** np.float32(age[s, k]))
        utility[s, k] = utility[s, k] * decay
        mean_h = _ZERO
        for b in range(batch):
            mean_h += h[s, b, k]
        mean_h = mean_h / batch_size
        mean_activation[s, k] = mean_activation[s, k] * decay + keep * mean_h
        estimate = mean_activation[s, k] / bias_correction
        mean_estimate[s, k] = estimate
        if util_code == 6:
            bias_corrected_utility[s, k] = random_utility[s, k]
        else:
            incoming = _ZERO
            if util_code in (2, 3, 4):  # the types that divide by the mean incoming |w|
                for j in range(fan_in):
                    incoming += abs(incoming_weight[s, k, j])
                incoming = incoming / np.float32(fan_in)
            outgoing = _ZERO
            if util_code in (0, 1, 3, 5):
                for o in range(fan_out):
                    outgoing += abs(outgoing_weight[s, o, k])
                outgoing = outgoing / np.float32(fan_out)
            activity = _ZERO  # mean |h| (contribution) or mean |h − f̂| (the deviation types)
            if util_code in (0, 1, 3, 4):
                for b in range(batch):
                    value = h[s, b, k] if util_code == 0 else h[s, b, k] - estimate
                    activity += abs(value)
                activity = activity / batch_size
            if util_code == 0 or util_code == 1:
                instantaneous = outgoing * activity
            elif util_code == 2:
                instantaneous = _ONE / incoming
            elif util_code == 3:
                instantaneous = outgoing * activity / incoming
            elif util_code == 4:
                instantaneous = activity / incoming
            else:
                instantaneous = outgoing
            utility[s, k] = utility[s, k] + keep * instantaneous
            bias_corrected_utility[s, k] = utility[s, k] / bias_correction
        if age[s, k] > maturity_threshold:
            eligible += 1
    expected = replacement_rate * (eligible if eligible_base else width)
    if accumulate:
        if eligible > 0:
            accumulated[s] += expected
        count = np.floor(accumulated[s])
        accumulated[s] -= count
    elif expected < 1.0:
        count = 1.0 if draws[s] < expected else 0.0
    else:
        count = np.floor(expected)
    counts[s] = min(int(count), eligible)
