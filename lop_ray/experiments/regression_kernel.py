"""Slowly-changing regression for S seeds through any number of examples in one compiled call:
the stream, forward, backward, the optimizer (SGD with momentum and L2, Adam/AdamW, L2 Init),
continual backprop (statistics and replacement) and shrink-and-perturb's noise.

At ~700 flops a seed-step, one example per PyTorch call is all dispatch; even the seed-batched
PyTorch step (one call per operation for all seeds) costs its ~20 calls per example. Here a seed
runs its whole share of the examples in one loop, its parameters in cache, and nothing crosses
seeds: seed s's numbers are the same in any batch and any cut of the examples into calls. Its state
lives in the same tensors as the PyTorch learner's (the adapter, `compiled_regression`, passes numpy
views of them), so checkpoints, metrics and the plasticity probe do not know which path ran.

What is shared with the PyTorch path, so computed by the same code: the stream (`data.regression`'s
compiled functions; its per-example lookup, `example_target`, is written out in `advance_seeds`,
where an inlined call's array arguments cost more than the example; tests/test_compiled_regression.py
compares the kernel's errors with those of the PyTorch learner, which reads the stream), CBP's unit
statistics (`cbp_statistics_kernel.seed_unit_statistics`), the
counter-based draws (`counter_rng`, S&P's Gaussians included), and the order of the forward and backward sums
(`nets.one_example_kernel`). What is written here again, and agrees with PyTorch's kernels to float32
rounding: the optimizers' element-wise updates (PyTorch's vectorised kernels fuse some multiply-adds)
and the replacement (tests/test_compiled_regression.py pins both paths).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from lop_ray.algos.cbp_statistics_kernel import seed_unit_statistics
from lop_ray.algos.counter_rng import compiled_normal_rows, counter_base, counter_uniform
from lop_ray.data.regression import (
    FAST_BITS,
    TABLE_BITS,
    advance_pattern,
    direct_target,
    example_index,
    target_table,
)
from lop_ray.nets.one_example_kernel import _activate, _derivative

SGD, ADAM, ADAMW = 0, 1, 2  # optimizer codes
NOISE_ROWS = 64  # S&P's steps drawn per call: long loops for the Gaussian transform's vectors
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO_PI = 2.0 * math.pi


@numba.njit(cache=True, inline="always")
def _adam_correction(beta_log: np.float32, step: np.float32) -> np.float32:
    """1 − β^step as `optim._bias_correction`: −expm1(step · ln β), in float32."""
    return -np.float32(np.expm1(np.float32(step * beta_log)))


@numba.njit(cache=True, inline="always")
def _sgd_block(
    p: np.ndarray, s: int, g: np.ndarray, buffer: np.ndarray, initial: np.ndarray, count: int,
    lr: np.float32, momentum: np.float32, weight_decay: np.float32, l2_init2: np.float32,
    scratch: np.ndarray,
) -> None:  # fmt: skip
    """SGD over one parameter's `count` elements of seed s (rows of flat (S, n) views): coupled L2,
    L2 Init's pull, momentum, as `optim.SGD`. Zero coefficients add exact zeros, so the loops have
    no branches; each writes one array, so that they vectorise (LLVM does not prove rows of
    different arrays apart, and gives up on loops that write several)."""
    grad = scratch[0]
    for e in range(count):
        value = p[s, e]
        grad[e] = g[e] + weight_decay * value + l2_init2 * (value - initial[s, e])
    if momentum != _ZERO:
        for e in range(count):
            buffer[s, e] = buffer[s, e] * momentum + grad[e]
        for e in range(count):
            p[s, e] = p[s, e] - lr * buffer[s, e]
    else:
        for e in range(count):
            p[s, e] = p[s, e] - lr * grad[e]


@numba.njit(cache=True, inline="always")
def _adam_moments(
    p: np.ndarray, s: int, g: np.ndarray, first: np.ndarray, second: np.ndarray, initial: np.ndarray,
    count: int, coupled_decay: np.float32, keep_weight: np.float32, l2_init2: np.float32,
    one_minus_beta1: np.float32, beta2: np.float32, one_minus_beta2: np.float32, scratch: np.ndarray,
) -> None:  # fmt: skip
    """Adam's first half for both blocks: the decayed weights into scratch[0], the regularised
    gradient into scratch[1], and the moments updated in place (one array written per loop)."""
    value, grad = scratch[0], scratch[1]
    for e in range(count):
        value[e] = p[s, e] * keep_weight
    for e in range(count):
        grad[e] = g[e] + coupled_decay * value[e] + l2_init2 * (value[e] - initial[s, e])
    for e in range(count):  # lerp with weight 1 − β1 < 0.5
        first[s, e] = first[s, e] + one_minus_beta1 * (grad[e] - first[s, e])
    for e in range(count):
        second[s, e] = second[s, e] * beta2 + one_minus_beta2 * grad[e] * grad[e]


@numba.njit(cache=True, inline="always")
def _adam_block(
    p: np.ndarray, s: int, g: np.ndarray, steps: np.ndarray, first: np.ndarray, second: np.ndarray,
    initial: np.ndarray, count: int, lr: np.float32, coupled_decay: np.float32, keep_weight: np.float32,
    l2_init2: np.float32, one_minus_beta1: np.float32, beta2: np.float32, one_minus_beta2: np.float32,
    eps: np.float32, corrections1: np.ndarray, corrections2: np.ndarray, scratch: np.ndarray,
) -> None:  # fmt: skip
    """Adam/AdamW over one parameter's elements of seed s, as `optim.Adam` with per-element step
    counts; the bias corrections are looked up by step count (`correction_tables`). One array
    written per loop, as in `_sgd_block`."""
    last = corrections1.shape[0] - 1
    value, correction1, correction2 = scratch[0], scratch[2], scratch[3]
    _adam_moments(
        p, s, g, first, second, initial, count, coupled_decay, keep_weight, l2_init2, one_minus_beta1,
        beta2, one_minus_beta2, scratch,
    )  # fmt: skip
    for e in range(count):
        steps[s, e] = steps[s, e] + _ONE
    for e in range(count):
        index = min(int(steps[s, e]), last)
        correction1[e] = corrections1[index]
        correction2[e] = corrections2[index]
    for e in range(count):
        denominator = np.float32(np.sqrt(second[s, e])) / correction2[e] + eps
        p[s, e] = value[e] - lr * ((first[s, e] / correction1[e]) / denominator)


@numba.njit(cache=True, inline="always")
def _sgd_element(
    value: np.float32,
    gradient: np.float32,
    initial: np.float32,
    lr: np.float32,
    decay: np.float32,
    l2_init2: np.float32,
) -> np.float32:
    """Momentless SGD of one element: `_sgd_block`'s arithmetic, in the same order."""
    return value - lr * (gradient + decay * value + l2_init2 * (value - initial))


@numba.njit(cache=True, inline="always")
def _fused_element(
    code: int, value: np.float32, gradient: np.float32, initial: np.float32, first: np.float32,
    second: np.float32, lr: np.float32, decay: np.float32, keep: np.float32, l2_init2: np.float32,
    one_minus_beta1: np.float32, beta2: np.float32, one_minus_beta2: np.float32, eps: np.float32,
    correction1: np.float32, correction2: np.float32,
) -> tuple[np.float32, np.float32, np.float32]:  # fmt: skip
    """One element's momentless SGD (`_sgd_block`'s arithmetic) or Adam (`_adam_block`'s) where
    all of a seed's elements share one step count, so one pair of bias corrections serves them all;
    once both are exactly 1 (after ~17,000 steps at β2 = 0.999) their divisions are left out (x / 1
    is x in IEEE arithmetic). The same float32 operations in the same order, so the same values:
    (new value, first moment, second moment). Scalars in and out: an array passed to an inlined
    function costs two atomic reference-count updates a call, more than the element's arithmetic."""
    if code == SGD:
        return _sgd_element(value, gradient, initial, lr, decay, l2_init2), first, second
    decayed = value * keep
    grad = gradient + decay * decayed + l2_init2 * (decayed - initial)
    first = first + one_minus_beta1 * (grad - first)
    second = second * beta2 + one_minus_beta2 * grad * grad
    if correction1 == _ONE and correction2 == _ONE:
        return decayed - lr * (first / (np.float32(np.sqrt(second)) + eps)), first, second
    denominator = np.float32(np.sqrt(second)) / correction2 + eps
    return decayed - lr * ((first / correction1) / denominator), first, second


@numba.njit(cache=True, inline="always")
def _draw_noise_rows(
    key: np.uint64, step: int, rows: int, stream: int, parameters: int, counters: np.ndarray,
    noise_rows: np.ndarray, scratch: np.ndarray,
) -> tuple[int, int]:  # fmt: skip
    """S&P's Gaussians of counter steps step … step + rows, in one call (long loops for the
    transform's vectors); the steps now held."""
    for r in range(rows):
        counters[r] = step + r
    compiled_normal_rows(np.uint64(key), counters[:rows], stream, parameters, noise_rows, scratch)
    return step, step + rows


@numba.njit(cache=True, inline="always")
def _one_step_count(s: int, counts: tuple, sizes: tuple, steps_ahead: int) -> float:
    """The step count every element of seed s shares (Adam without unit resets: all of them), or
    −1 when they differ or would pass 2²⁴ within `steps_ahead` steps (float32 counts stop being
    exact integers there)."""
    shared = counts[3][s, 0]  # the output bias: every network has one (a linear learner no hidden weights)
    for parameter in range(4):
        row = counts[parameter]
        for e in range(sizes[parameter]):
            if row[s, e] != shared:
                return -1.0
    if np.float64(shared) + steps_ahead >= 16_777_216.0:
        return -1.0
    return np.float64(shared)


@numba.njit(cache=True)
def correction_tables(beta1: float, beta2: float) -> tuple[np.ndarray, np.ndarray]:
    """Adam's 1 − β1^step and √(1 − β2^step) (as `optim._bias_correction`, in float32) for every
    step count up to the first from which both are exactly 1, the last entry standing for all later
    counts (checked for 10⁵ more): a lookup instead of two expm1 per element and step."""
    log1 = np.float32(math.log(beta1)) if beta1 > 0.0 else np.float32(-np.inf)
    log2 = np.float32(math.log(beta2)) if beta2 > 0.0 else np.float32(-np.inf)
    step = 1  # (step counts start at 1; entry 0 is never read)
    while (
        _adam_correction(log1, np.float32(step)) != _ONE or _adam_correction(log2, np.float32(step)) != _ONE
    ):
        step += 1
        if step > 1 << 24:
            raise ValueError("Adam's bias corrections never reach 1 in float32 (β too close to 1)")
    for later in range(step, step + 100_000):
        if (
            _adam_correction(log1, np.float32(later)) != _ONE
            or _adam_correction(log2, np.float32(later)) != _ONE
        ):
            raise ValueError("Adam's float32 bias corrections are not monotone")
    table1 = np.empty(step + 1, dtype=np.float32)
    table2 = np.empty(step + 1, dtype=np.float32)
    table1[0], table2[0] = _ONE, _ONE
    for i in range(1, step + 1):
        table1[i] = _adam_correction(log1, np.float32(i))
        table2[i] = np.float32(np.sqrt(_adam_correction(log2, np.float32(i))))
    return table1, table2


@numba.njit(cache=True, nogil=True, error_model="numpy")
def advance_seeds(
    stream: tuple,  # (keys (S,) uint64, patterns (S, slow) f32, pattern_periods (S,) i64, first, count,
    #                flip_after, flip_one, target w1 (S,T,I), b1 (S,T), w2 (S,T), b2 (S,1), threshold (S,T))
    net: tuple,  # (hidden weight (S,H,I), hidden bias (S,H), output weight (S,1,H or I), output bias (S,1))
    activation: int,
    optimizer: tuple,  # (code, lr, momentum, weight_decay, l2_init, beta1, beta2, eps)
    optimizer_state: tuple,  # per parameter (a, b, c, initial), 4 parameters: 16 arrays
    perturb: tuple,  # (scale, keys (S,) uint64, first step, stream)
    cbp: tuple,  # (on, util code, η, maturity, ρ, eligible base, accumulate, bias correction, reset,
    #             keys (S,) uint64, first step, K, bound, pool (S, P) f32, cursor (S,) i64, saturated age)
    cbp_state: tuple,  # (utility, corrected utility, mean activation, age, accumulated, replaced)
    progress: np.ndarray,  # (S,) i64 in/out: examples of this call each seed has done
    error_sums: np.ndarray,  # (S,) f64 in/out: each seed's summed squared error of this call
) -> None:
    """Advance every seed from example `first + progress[s]` to `first + count`; a seed stops
    early (progress < count) when its pool of CBP draws cannot hold a step's worst case: the caller
    refills the pool and calls again."""
    keys, patterns, pattern_periods, first, count, flip_after, flip_one, tw1, tb1, tw2, tb2, threshold = (
        stream
    )
    wh, bh, wo, bo = net
    code, lr64, momentum64, wd64, l2_init64, beta1_64, beta2_64, eps64 = optimizer
    (sa_wh, sb_wh, sc_wh, i_wh, sa_bh, sb_bh, sc_bh, i_bh,
     sa_wo, sb_wo, sc_wo, i_wo, sa_bo, sb_bo, sc_bo, i_bo) = optimizer_state  # fmt: skip
    perturb_scale64, perturb_keys, perturb_first, perturb_stream = perturb
    (cbp_on, util_code, eta, maturity, rate, eligible_base, accumulate, bias_correction,
     reset_state, cbp_keys, cbp_first, most, bound, pool, cursor, saturated_age) = cbp  # fmt: skip
    utility, corrected, mean_activation, age, accumulated, replaced = cbp_state

    seeds = wh.shape[0]
    hidden = wh.shape[1]
    inputs = wo.shape[2] if hidden == 0 else wh.shape[2]
    num_slow = patterns.shape[1]
    num_fast = inputs - num_slow
    lr, momentum, weight_decay = np.float32(lr64), np.float32(momentum64), np.float32(wd64)
    l2_init2 = np.float32(2.0 * l2_init64)
    keep_weight = np.float32(1.0 - lr64 * wd64)
    beta2, eps = np.float32(beta2_64), np.float32(eps64)
    one_minus_beta1, one_minus_beta2 = np.float32(1.0 - beta1_64), np.float32(1.0 - beta2_64)
    perturb_scale = np.float32(perturb_scale64)
    fan_in = inputs

    x = np.empty(inputs, dtype=np.float32)
    pre = np.empty(max(hidden, 1), dtype=np.float32)
    back = np.empty(max(hidden, 1), dtype=np.float32)
    table = np.empty(1 << num_fast if num_fast <= TABLE_BITS else 0, dtype=np.float32)  # a period's targets
    # CBP's per-step scratch, seed-indexed as `seed_unit_statistics` reads it
    h = np.zeros((seeds, 1, max(hidden, 1)), dtype=np.float32)
    random_utility = np.zeros((seeds, max(hidden, 1)), dtype=np.float32)
    draws = np.zeros(seeds, dtype=np.float64)
    mean_estimate = np.zeros((seeds, max(hidden, 1)), dtype=np.float32)
    counts = np.zeros(seeds, dtype=np.int64)
    chosen = np.empty(max(most, 1), dtype=np.int64)
    corrections1, corrections2 = correction_tables(beta1_64, beta2_64) if code != SGD else (x[:1], x[:1])
    coupled_decay = weight_decay if code == ADAM else _ZERO
    decoupled_keep = keep_weight if code == ADAMW else _ONE
    fan = wo.shape[2]
    # the parameters and their optimizer state as flat rows per seed, and one step's gradients
    flat = (seeds, hidden * inputs)
    wh_f, sa_wh_f, sb_wh_f = wh.reshape(flat), sa_wh.reshape(flat), sb_wh.reshape(flat)
    sc_wh_f, i_wh_f = sc_wh.reshape(flat), i_wh.reshape(flat)
    out = (seeds, fan)
    wo_f, sa_wo_f, sb_wo_f = wo.reshape(out), sa_wo.reshape(out), sb_wo.reshape(out)
    sc_wo_f, i_wo_f = sc_wo.reshape(out), i_wo.reshape(out)
    grad_wh = np.empty(hidden * inputs, dtype=np.float32)
    grad_wo = np.empty(fan, dtype=np.float32)
    grad_bo = np.empty(1, dtype=np.float32)
    scratch = np.empty((4, max(hidden * inputs, fan, 1)), dtype=np.float32)  # the update's loops
    parameters = hidden * inputs + hidden + fan + 1
    # S&P's draws, in parameter order, for up to NOISE_ROWS steps of a seed at once
    noise_rows = np.empty((NOISE_ROWS, parameters), dtype=np.float32)
    noise_counters = np.empty(NOISE_ROWS, dtype=np.int64)
    noise_scratch = np.empty((5, NOISE_ROWS * ((parameters + 1) // 2)), dtype=np.float64)
    on = np.empty(inputs, dtype=np.int64)  # the inputs that are 1 this example
    # plain SGD: an input of 0 has a gradient of 0 and leaves its weights as they are
    plain_sgd = code == SGD and momentum == _ZERO and weight_decay == _ZERO and l2_init2 == _ZERO
    # the one-pass update (`_fused_element`): momentless SGD, and Adam while a seed's counts are one
    decay = weight_decay if code == SGD else coupled_decay
    keep = _ONE if code == SGD else decoupled_keep
    # S&P's noise joins that pass when nothing comes between the update and the noise (CBP does)
    fuse_noise = perturb_scale != _ZERO and not cbp_on and not plain_sgd
    adam_value = np.empty(max(hidden * inputs, 1), dtype=np.float32)  # Adam's hidden-weight loops
    adam_grad = np.empty(max(hidden * inputs, 1), dtype=np.float32)

    step_counts = (sa_wh_f, sa_bh, sa_wo_f, sa_bo)
    parameter_sizes = (hidden * inputs, hidden, fan, 1)
    for s in range(seeds):
        # without unit resets Adam's counts move together: one count per seed, kept in `shared_count`
        shared_count = -1.0
        if code != SGD and not cbp_on:
            shared_count = _one_step_count(s, step_counts, parameter_sizes, count - progress[s])
        first_example = progress[s]
        key = np.uint64(keys[s])
        # the seed's target network, viewed once: a view made per example costs more than the example
        target_w1, target_b1, target_w2, target_b2 = tw1[s], tb1[s], tw2[s], tb2[s]
        target_threshold, pattern = threshold[s], patterns[s]
        fused = (code == SGD and momentum == _ZERO) or shared_count >= 0.0
        period = -1
        fast_base = np.uint64(0)
        noise_first, noise_last = 0, 0  # the steps whose draws noise_rows holds
        for t in range(progress[s], count):
            if cbp_on and cursor[s] + most * fan_in > pool.shape[1]:
                break  # the pool might not hold this step's draws
            position = first + t
            p = position // flip_after
            if p != period:  # a new period (or this call's first): its slow bits and targets
                period = p
                pattern_periods[s] = advance_pattern(key, pattern, pattern_periods[s], p, flip_one)
                fast_base = counter_base(key, np.uint64(p), np.uint64(FAST_BITS))
                if num_fast <= TABLE_BITS:
                    target_table(
                        target_w1, target_b1, target_w2, target_b2, target_threshold, pattern, num_fast, table
                    )
                for j in range(num_slow):
                    x[j] = pattern[j]
            # `example_target`, written out: its seven arrays cost more as an inlined call's
            # reference counts than the example itself
            index = example_index(fast_base, position % flip_after, num_fast)
            for b in range(num_fast):
                x[num_slow + b] = np.float32((index >> np.uint64(b)) & np.uint64(1))
            if num_fast <= TABLE_BITS:
                target = table[index]
            else:
                target = direct_target(target_w1, target_b1, target_w2, target_b2, target_threshold, x)

            # forward, in `one_example_kernel`'s order of sums. The inputs are bits: w·1 is w, and a
            # w·0 term adds ±0 to a sum that started at +0, which changes nothing, so only the inputs
            # that are 1 are summed (the same float32 sums, in the same order)
            active = 0
            for j in range(inputs):
                if x[j] != _ZERO:
                    on[active] = j
                    active += 1
            out_sum = _ZERO
            for k in range(hidden):
                z = _ZERO
                for q in range(active):
                    z += wh[s, k, on[q]]
                z += bh[s, k]
                pre[k] = z
                a = _activate(activation, z)
                h[s, 0, k] = a
                out_sum += wo[s, 0, k] * a
            if hidden == 0:
                for q in range(active):
                    out_sum += wo[s, 0, on[q]]
            y = out_sum + bo[s, 0]
            diff = y - target
            error_sums[s] += np.float64(diff * diff)
            delta = diff + diff
            for k in range(hidden):
                back[k] = delta * wo[s, 0, k] * _derivative(activation, pre[k], h[s, 0, k])

            noise_row = 0  # S&P's `normal` of counter step, over the parameters in order: its row
            if perturb_scale != _ZERO:
                step = perturb_first + t
                if not noise_first <= step < noise_last:  # the next steps' draws, in one call
                    noise_first, noise_last = _draw_noise_rows(
                        perturb_keys[s], step, min(NOISE_ROWS, count - t), perturb_stream, parameters,
                        noise_counters, noise_rows, noise_scratch,
                    )  # fmt: skip
                noise_row = step - noise_first

            # the update, parameter by parameter in the optimizer's order (hidden w, b, output w, b)
            if plain_sgd:
                for k in range(hidden):
                    step_k = lr * back[k]
                    for q in range(active):
                        wh[s, k, on[q]] = wh[s, k, on[q]] - step_k
                    bh[s, k] = bh[s, k] - step_k
                if hidden:
                    for k in range(hidden):
                        wo[s, 0, k] = wo[s, 0, k] - lr * (delta * h[s, 0, k])
                else:
                    step_o = lr * delta
                    for q in range(active):
                        wo[s, 0, on[q]] = wo[s, 0, on[q]] - step_o
                bo[s, 0] = bo[s, 0] - lr * delta
            elif fused:
                c1, c2 = _ONE, _ONE
                if code != SGD:
                    shared_count += 1.0
                    count_index = min(int(shared_count), corrections1.shape[0] - 1)
                    c1, c2 = corrections1[count_index], corrections2[count_index]
                noise_scale = perturb_scale if fuse_noise else _ZERO  # S&P's noise in the same pass
                # written out here, not in helpers taking arrays: each array passed to an inlined
                # function costs two atomic reference-count updates a call, more than its loop
                weights = hidden * inputs
                if code == SGD:  # one pass, one array written: LLVM vectorises it
                    for k in range(hidden):
                        gradient_k = back[k]
                        for j in range(inputs):
                            wh[s, k, j] = _sgd_element(
                                wh[s, k, j], gradient_k * x[j], i_wh[s, k, j], lr, decay, l2_init2
                            )
                else:  # Adam's square roots and divisions want vectors: a loop per array written
                    for k in range(hidden):
                        gradient_k = back[k]
                        for j in range(inputs):
                            adam_grad[k * inputs + j] = gradient_k * x[j]
                    for e in range(weights):
                        adam_value[e] = wh_f[s, e] * keep
                    for e in range(weights):
                        value = adam_value[e]
                        adam_grad[e] = adam_grad[e] + decay * value + l2_init2 * (value - i_wh_f[s, e])
                    for e in range(weights):  # lerp with weight 1 − β1 < 0.5
                        sb_wh_f[s, e] = sb_wh_f[s, e] + one_minus_beta1 * (adam_grad[e] - sb_wh_f[s, e])
                    for e in range(weights):
                        sc_wh_f[s, e] = sc_wh_f[s, e] * beta2 + one_minus_beta2 * adam_grad[e] * adam_grad[e]
                    if c1 == _ONE and c2 == _ONE:
                        for e in range(weights):
                            denominator = np.float32(np.sqrt(sc_wh_f[s, e])) + eps
                            wh_f[s, e] = adam_value[e] - lr * (sb_wh_f[s, e] / denominator)
                    else:
                        for e in range(weights):
                            denominator = np.float32(np.sqrt(sc_wh_f[s, e])) / c2 + eps
                            wh_f[s, e] = adam_value[e] - lr * ((sb_wh_f[s, e] / c1) / denominator)
                if noise_scale != _ZERO:
                    for e in range(weights):
                        wh_f[s, e] += noise_scale * noise_rows[noise_row, e]
                # the other 2·hidden + 1 elements, one at a time
                for k in range(hidden):
                    bh[s, k], sb_bh[s, k], sc_bh[s, k] = _fused_element(
                        code, bh[s, k], back[k], i_bh[s, k], sb_bh[s, k], sc_bh[s, k],
                        lr, decay, keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2,
                    )  # fmt: skip
                    if noise_scale != _ZERO:
                        bh[s, k] += noise_scale * noise_rows[noise_row, weights + k]
                for k in range(fan):
                    wo[s, 0, k], sb_wo[s, 0, k], sc_wo[s, 0, k] = _fused_element(
                        code, wo[s, 0, k], delta * (h[s, 0, k] if hidden else x[k]), i_wo[s, 0, k],
                        sb_wo[s, 0, k], sc_wo[s, 0, k],
                        lr, decay, keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2,
                    )  # fmt: skip
                    if noise_scale != _ZERO:
                        wo[s, 0, k] += noise_scale * noise_rows[noise_row, weights + hidden + k]
                bo[s, 0], sb_bo[s, 0], sc_bo[s, 0] = _fused_element(
                    code, bo[s, 0], delta, i_bo[s, 0], sb_bo[s, 0], sc_bo[s, 0],
                    lr, decay, keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, c1, c2,
                )  # fmt: skip
                if noise_scale != _ZERO:
                    bo[s, 0] += noise_scale * noise_rows[noise_row, weights + hidden + fan]
            else:
                for k in range(hidden):
                    for j in range(inputs):
                        grad_wh[k * inputs + j] = back[k] * x[j]
                for k in range(fan):
                    grad_wo[k] = delta * (h[s, 0, k] if hidden else x[k])
                grad_bo[0] = delta
                if code == SGD:
                    _sgd_block(
                        wh_f, s, grad_wh, sa_wh_f, i_wh_f, hidden * inputs, lr, momentum, weight_decay,
                        l2_init2, scratch,
                    )  # fmt: skip
                    _sgd_block(
                        bh, s, back, sa_bh, i_bh, hidden, lr, momentum, weight_decay, l2_init2, scratch
                    )
                    _sgd_block(
                        wo_f, s, grad_wo, sa_wo_f, i_wo_f, fan, lr, momentum, weight_decay, l2_init2, scratch
                    )
                    _sgd_block(bo, s, grad_bo, sa_bo, i_bo, 1, lr, momentum, weight_decay, l2_init2, scratch)
                else:
                    _adam_block(
                        wh_f, s, grad_wh, sa_wh_f, sb_wh_f, sc_wh_f, i_wh_f, hidden * inputs, lr, coupled_decay,
                        decoupled_keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, corrections1, corrections2, scratch,
                    )  # fmt: skip
                    _adam_block(
                        bh, s, back, sa_bh, sb_bh, sc_bh, i_bh, hidden, lr, coupled_decay,
                        decoupled_keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, corrections1, corrections2, scratch,
                    )  # fmt: skip
                    _adam_block(
                        wo_f, s, grad_wo, sa_wo_f, sb_wo_f, sc_wo_f, i_wo_f, fan, lr, coupled_decay,
                        decoupled_keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, corrections1, corrections2, scratch,
                    )  # fmt: skip
                    _adam_block(
                        bo, s, grad_bo, sa_bo, sb_bo, sc_bo, i_bo, 1, lr, coupled_decay,
                        decoupled_keep, l2_init2, one_minus_beta1, beta2, one_minus_beta2, eps, corrections1, corrections2, scratch,
                    )  # fmt: skip

            if cbp_on:
                step = cbp_first + t
                if util_code == 6:  # `random`: CounterNoise stream 0 of group 0
                    base = counter_base(np.uint64(cbp_keys[s]), np.uint64(step), np.uint64(0))
                    for k in range(hidden):
                        random_utility[s, k] = np.float32(counter_uniform(base, np.uint64(k)))
                if not accumulate:  # the probabilistic rule's uniform: stream 1 of group 0
                    draws[s] = counter_uniform(
                        counter_base(np.uint64(cbp_keys[s]), np.uint64(step), np.uint64(1)), 0
                    )
                seed_unit_statistics(
                    s, h, wh, wo, utility, corrected, mean_activation, age, accumulated,
                    random_utility, draws, eta, util_code, maturity, rate, eligible_base, accumulate,
                    mean_estimate, counts, saturated_age,
                )  # fmt: skip
                if counts[s] > 0:
                    _replace(
                        s, counts[s], most, maturity, bound, bias_correction, reset_state, wh, bh, wo, bo,
                        utility, corrected, mean_activation, age, mean_estimate, pool, cursor, chosen,
                        sa_wh, sb_wh, sc_wh, sa_bh, sb_bh, sc_bh, sa_wo, sb_wo, sc_wo,
                    )  # fmt: skip
                    replaced[s] += counts[s]

            if perturb_scale != _ZERO and not (fused and fuse_noise):  # not added in the update's pass
                noise = noise_rows[noise_row]
                weights = hidden * inputs
                for e in range(weights):
                    wh_f[s, e] += perturb_scale * noise[e]
                for k in range(hidden):
                    bh[s, k] += perturb_scale * noise[weights + k]
                for k in range(fan):
                    wo_f[s, k] += perturb_scale * noise[weights + hidden + k]
                bo[s, 0] += perturb_scale * noise[weights + hidden + fan]
            progress[s] = t + 1
        if shared_count >= 0.0 and progress[s] > first_example:  # the counts the loop kept as one
            for parameter in range(4):
                row = step_counts[parameter]
                for e in range(parameter_sizes[parameter]):
                    row[s, e] = np.float32(shared_count)


@numba.njit(cache=True, inline="always")
def _replace(
    s, count, most, maturity, bound, bias_correction, reset_state, wh, bh, wo, bo,
    utility, corrected, mean_activation, age, mean_estimate, pool, cursor, chosen,
    sa_wh, sb_wh, sc_wh, sa_bh, sb_bh, sc_bh, sa_wo, sb_wo, sc_wo,
) -> None:  # fmt: skip
    """`ContinualBackprop._replace` for seed s of a one-hidden-layer net: its `count` eligible units
    of lowest utility (ties to the lower index, NaN last, as the stable sorts), re-initialised from
    the seed's pool of uniforms, their outgoing weights zeroed and their mean contribution moved into
    the output bias, their statistics and optimizer entries zeroed."""
    hidden, inputs = wh.shape[1], wh.shape[2]
    for c in range(count):  # the c-th lowest: the lowest eligible unit not yet chosen
        best = -1
        for k in range(hidden):
            if age[s, k] <= maturity:
                continue
            taken = False
            for d in range(c):
                taken = taken or chosen[d] == k
            if taken:
                continue
            if (
                best < 0
                or corrected[s, k] < corrected[s, best]
                or (np.isnan(corrected[s, best]) and not np.isnan(corrected[s, k]))
            ):
                best = k
        chosen[c] = best
    if bias_correction:
        total = _ZERO
        for c in range(count):
            total += wo[s, 0, chosen[c]] * mean_estimate[s, chosen[c]]
        bo[s, 0] += total
    width = bound + bound
    start = cursor[s]
    for c in range(most):  # the pool is read K rows at a time; rows past `count` are not used
        if c >= count:
            break
        k = chosen[c]
        for j in range(inputs):
            wh[s, k, j] = np.float32(np.float64(pool[s, start + c * inputs + j]) * width - bound)
        bh[s, k] = _ZERO
        wo[s, 0, k] = _ZERO
        utility[s, k] = _ZERO
        corrected[s, k] = _ZERO
        mean_activation[s, k] = _ZERO
        age[s, k] = 0
        if reset_state:
            for state in (sa_wh, sb_wh, sc_wh):  # (an unused slot is zeros: zeroed again)
                for j in range(inputs):
                    state[s, k, j] = _ZERO
            for state in (sa_bh, sb_bh, sc_bh):
                state[s, k] = _ZERO
            for state in (sa_wo, sb_wo, sc_wo):
                state[s, 0, k] = _ZERO
    cursor[s] = start + count * inputs
