"""Continual backprop (spec/algorithms.md, "Continual backprop"), pinned on hand-computed cases.

Every expected number below is worked out by hand (or by `reference_utilities`, a plain-Python
restatement of the spec's formulas with lists and floats) — never by calling the code under test a
second time. The hand-set network used throughout is

    W_in  = [[1, -2], [0.5, 0.5], [-1, 3]]     b_in  = [0.1, -0.2, 0.3]
    W_out = [[2, -1, 0.5], [-4, 3, 0.5]]       b_out = [0.25, -0.75]

so o = mean_k |W_out[k, i]| = [3, 2, 0.5] and g = mean_j |W_in[i, j]| = [1.5, 0.5, 2].
Between the two steps of the two-step scenario the weights are moved (as an optimizer would) to

    W_in' = [[2, 2], [0.25, -0.25], [-1, 3]]   W_out' = [[-1, 0, 4], [1, 2, -2]]

giving o' = [1, 1, 3] and g' = [2, 0.25, 2]. Activations (batch of 2, 3 units):

    H1 = [[1, 0, 2], [3, 1, 0]]    H2 = [[2, 2, 2], [0, 2, 4]]

With η = 0.5: step 1, bc = 0.5, f̄ = [1, 0.25, 0.5], f̂ = [2, 0.5, 1], mean|h − f̂| = [1, 0.5, 1];
step 2, bc = 0.75, f̄ = [1, 1.125, 1.75], f̂ = [4/3, 1.5, 7/3], mean|h − f̂| = [1, 0.5, 1].
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from lop_ray.algos import Adam, CBPConfig, ContinualBackprop, counter_rng, make_optimizer
from lop_ray.nets import MLP, UnitGroup

ETA = 0.5
W_IN = [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]]
B_IN = [0.1, -0.2, 0.3]
W_OUT = [[2.0, -1.0, 0.5], [-4.0, 3.0, 0.5]]
B_OUT = [0.25, -0.75]
W_IN_2 = [[2.0, 2.0], [0.25, -0.25], [-1.0, 3.0]]
W_OUT_2 = [[-1.0, 0.0, 4.0], [1.0, 2.0, -2.0]]
H1 = [[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]]
H2 = [[2.0, 2.0, 2.0], [0.0, 2.0, 4.0]]
RELU_KAIMING_BOUND_FAN_IN_2 = math.sqrt(2.0) * math.sqrt(3.0 / 2.0)  # = sqrt(3)

# û after the two-step scenario (weights moved between the steps), per util_type, by hand:
#   u2 = η·(1 − η)·y1 + (1 − η)·y2 = 0.25·y1 + 0.5·y2,  û2 = u2 / (1 − η²) = u2 / 0.75.
EXPECTED_U2 = {
    "weight": [1.25, 1.0, 1.625],  # y1 = o = [3, 2, .5], y2 = o' = [1, 1, 3]
    "contribution": [2.0, 1.25, 4.625],  # y1 = o·[2, .5, 1] = [6, 1, .5]; y2 = o'·[1, 2, 3] = [1, 2, 9]
    "zero_contribution": [1.25, 0.5, 1.625],  # y1 = o·[1, .5, 1] = [3, 1, .5]; y2 = [1, .5, 3]
    "adaptable_contribution": [0.75, 1.5, 0.8125],  # y1 = [2, 2, .25]; y2 = [.5, 2, 1.5]
    "feature_by_input": [5 / 12, 1.25, 0.375],  # y1 = [2/3, 1, .5]; y2 = [.5, 2, .5]
    "adaptation": [5 / 12, 2.5, 0.375],  # y1 = 1/g = [2/3, 2, .5]; y2 = 1/g' = [.5, 4, .5]
}
EXPECTED_UHAT2 = {
    "weight": [5 / 3, 4 / 3, 13 / 6],
    "contribution": [8 / 3, 5 / 3, 37 / 6],
    "zero_contribution": [5 / 3, 2 / 3, 13 / 6],
    "adaptable_contribution": [1.0, 2.0, 13 / 12],
    "feature_by_input": [5 / 9, 5 / 3, 0.5],
    "adaptation": [5 / 9, 10 / 3, 0.5],
}
# û after step 1 alone (bc = 0.5, u1 = 0.5·y1, so û1 = y1):
EXPECTED_UHAT1 = {
    "weight": [3.0, 2.0, 0.5],
    "contribution": [6.0, 1.0, 0.5],
    "zero_contribution": [3.0, 1.0, 0.5],
    "adaptable_contribution": [2.0, 2.0, 0.25],
    "feature_by_input": [2 / 3, 1.0, 0.5],
    "adaptation": [2 / 3, 2.0, 0.5],
}


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def assert_values(actual: torch.Tensor, expected, rel: float = 1e-6) -> None:
    """Float32 state against float64 hand values: equal to float32 rounding."""
    got = [float(v) for v in actual.detach().reshape(-1)]
    want = [float(v) for v in torch.tensor(expected, dtype=torch.float64).reshape(-1)]
    assert got == pytest.approx(want, rel=rel, abs=1e-7)


def set_weights(net: MLP, w_in=W_IN, b_in=B_IN, w_out=W_OUT, b_out=B_OUT) -> None:
    with torch.no_grad():
        net.layers[0].weight[0].copy_(tensor(w_in))
        net.layers[0].bias[0].copy_(tensor(b_in))
        net.layers[1].weight[0].copy_(tensor(w_out))
        net.layers[1].bias[0].copy_(tensor(b_out))


def hand_net() -> MLP:
    net = MLP([2, 3, 2], "relu", generators=[torch.Generator().manual_seed(0)])
    set_weights(net)
    return net


def make_cbp(net: MLP, optimizer=None, seed: int = 0, **overrides) -> ContinualBackprop:
    settings = dict(
        replacement_rate=0.0,
        maturity_threshold=100,
        decay_rate=ETA,
        util_type="contribution",
        accumulate=False,
        bias_correction=True,
        reset_optimizer_state=True,
    )
    settings.update(overrides)
    if optimizer is None:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return ContinualBackprop(
        net.unit_groups(), optimizer, CBPConfig(**settings), torch.Generator().manual_seed(seed)
    )


def after_step(cbp: ContinualBackprop, activations) -> None:
    """One seed's (batch, units) activations, as the network of one seed gives them: (1, batch, units)."""
    cbp.after_step([h.unsqueeze(0) for h in activations])


def seed_states(cbp: ContinualBackprop) -> list[dict[str, torch.Tensor]]:
    """Each group's state of the one seed these tests run (S = 1): views, so writes go through."""
    return [{key: value[0] for key, value in state.items()} for state in cbp.state]


def two_step_scenario(cbp: ContinualBackprop, net: MLP) -> None:
    """Step 1 on H1 with the first weights, move the weights, step 2 on H2."""
    after_step(cbp, [tensor(H1)])
    set_weights(net, W_IN_2, B_IN, W_OUT_2, B_OUT)
    after_step(cbp, [tensor(H2)])


def reference_utilities(util_type: str, steps, eta: float):
    """The spec's test phase in plain Python: steps = [(o, g, rows of h)]; no replacement."""
    n = len(steps[0][0])
    u, fbar = [0.0] * n, [0.0] * n
    uhat, fhat = [0.0] * n, [0.0] * n
    for age, (o, g, rows) in enumerate(steps, start=1):
        bc = 1.0 - eta**age
        for i in range(n):
            column = [row[i] for row in rows]
            u[i] *= eta
            fbar[i] = eta * fbar[i] + (1.0 - eta) * sum(column) / len(column)
            fhat[i] = fbar[i] / bc
            mean_abs = sum(abs(v) for v in column) / len(column)
            deviation = sum(abs(v - fhat[i]) for v in column) / len(column)
            y = {
                "weight": o[i],
                "contribution": o[i] * mean_abs,
                "zero_contribution": o[i] * deviation,
                "adaptable_contribution": o[i] * deviation / g[i],
                "feature_by_input": deviation / g[i],
                "adaptation": 1.0 / g[i],
            }[util_type]
            u[i] += (1.0 - eta) * y
            uhat[i] = u[i] / bc
    return u, uhat, fbar, fhat


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# --- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        dict(replacement_rate=-0.1),
        dict(replacement_rate=1.5),
        dict(decay_rate=1.0),
        dict(decay_rate=-0.01),
        dict(maturity_threshold=-1),
        dict(util_type="bogus"),
    ],
)
def test_config_rejects_invalid_values(bad):
    with pytest.raises(ValueError):
        CBPConfig(**bad)


def test_after_step_needs_one_activation_per_group():
    net = hand_net()
    cbp = make_cbp(net)
    with pytest.raises(ValueError):
        after_step(cbp, [tensor(H1), tensor(H1)])


def test_initial_state_is_zero():
    cbp = make_cbp(hand_net())
    (state,) = seed_states(cbp)
    for key in ("utility", "bias_corrected_utility", "mean_activation", "age"):
        assert state[key].tolist() == [0, 0, 0]
    assert float(state["accumulated"]) == 0.0
    assert cbp.replaced_total == 0


# --- the test phase: utilities ------------------------------------------------------------------
@pytest.mark.parametrize("util_type", sorted(EXPECTED_UHAT2))
def test_utility_after_one_step(util_type):
    net = hand_net()
    cbp = make_cbp(net, util_type=util_type)
    after_step(cbp, [tensor(H1)])
    (state,) = seed_states(cbp)
    assert state["age"].tolist() == [1, 1, 1]
    assert_values(state["mean_activation"], [1.0, 0.25, 0.5])  # f̄ = (1 − η)·mean(h)
    assert_values(state["utility"], [0.5 * v for v in EXPECTED_UHAT1[util_type]])
    assert_values(state["bias_corrected_utility"], EXPECTED_UHAT1[util_type])


@pytest.mark.parametrize("util_type", sorted(EXPECTED_UHAT2))
def test_utility_two_steps_with_moving_weights(util_type):
    net = hand_net()
    cbp = make_cbp(net, util_type=util_type)
    two_step_scenario(cbp, net)
    (state,) = seed_states(cbp)
    assert state["age"].tolist() == [2, 2, 2]
    assert_values(state["mean_activation"], [1.0, 1.125, 1.75])
    assert_values(state["utility"], EXPECTED_U2[util_type])
    assert_values(state["bias_corrected_utility"], EXPECTED_UHAT2[util_type])
    # the weights themselves are not touched by the test phase
    assert net.layers[1].weight[0].tolist() == W_OUT_2
    assert net.layers[1].bias[0].tolist() == B_OUT


def test_reference_reproduces_the_hand_table():
    """The plain-Python reference used below agrees with the hand-worked table."""
    steps = [([3, 2, 0.5], [1.5, 0.5, 2], H1), ([1, 1, 3], [2, 0.25, 2], H2)]
    for util_type, expected in EXPECTED_UHAT2.items():
        u, uhat, fbar, fhat = reference_utilities(util_type, steps, ETA)
        assert uhat == pytest.approx(expected, rel=1e-12)
        assert u == pytest.approx(EXPECTED_U2[util_type], rel=1e-12)
        assert fbar == pytest.approx([1.0, 1.125, 1.75])
        assert fhat == pytest.approx([4 / 3, 1.5, 7 / 3])


@pytest.mark.parametrize("util_type", sorted(EXPECTED_UHAT2))
def test_utility_many_steps_with_paper_decay(util_type):
    """η = 0.99 over 6 steps of random activations and drifting weights, against the reference."""
    eta = 0.99
    net = hand_net()
    cbp = make_cbp(net, util_type=util_type, decay_rate=eta)
    data = torch.Generator().manual_seed(7)
    steps = []
    for _ in range(6):
        with torch.no_grad():
            net.layers[0].weight[0].add_(0.3 * torch.randn(3, 2, generator=data))
            net.layers[1].weight[0].add_(0.3 * torch.randn(2, 3, generator=data))
        h = torch.randn(4, 3, generator=data).abs()
        o = [sum(abs(net.layers[1].weight[0][k, i].item()) for k in range(2)) / 2 for i in range(3)]
        g = [sum(abs(net.layers[0].weight[0][i, j].item()) for j in range(2)) / 2 for i in range(3)]
        steps.append((o, g, h.tolist()))
        after_step(cbp, [h])
    u, uhat, fbar, _ = reference_utilities(util_type, steps, eta)
    (state,) = seed_states(cbp)
    assert state["age"].tolist() == [6, 6, 6]
    assert_values(state["mean_activation"], fbar, rel=1e-5)
    assert_values(state["utility"], u, rel=1e-5)
    assert_values(state["bias_corrected_utility"], uhat, rel=1e-5)


def test_random_utility_is_a_fresh_uniform_draw_each_step():
    net = hand_net()
    cbp = make_cbp(net, util_type="random")
    (state,) = seed_states(cbp)
    state["utility"].copy_(tensor([1.0, 2.0, 4.0]))
    for step in range(1, 4):
        # the seed's counter stream 0 (this group's) at this step: a function of (key, step) only
        expected = counter_rng.uniform(cbp.keys, step - 1, 0, 3)[0]
        after_step(cbp, [tensor(H1)])
        assert torch.equal(state["bias_corrected_utility"], expected)
        # u is only decayed (nothing is added for `random`)
        assert_values(state["utility"], [ETA**step * v for v in (1.0, 2.0, 4.0)])
        assert state["age"].tolist() == [step] * 3


def test_all_layers_are_tested_before_any_is_regenerated():
    """In a 2 → 3 → 3 → 1 net, layer 2's utility uses its incoming weights as they were before
    layer 1's replacement zeroed a column of them (phases run over all layers)."""
    net = MLP([2, 3, 3, 1], "relu", generators=[torch.Generator().manual_seed(0)])
    w2 = [[1.0, -2.0, 3.0], [0.5, 0.5, 0.5], [-1.0, 1.0, 3.0]]  # g = [2, 0.5, 5/3]
    w3 = [[1.0, 2.0, 0.5]]  # o = [1, 2, 0.5]
    with torch.no_grad():
        net.layers[0].weight[0].copy_(tensor(W_IN))  # layer-1 g = [1.5, 0.5, 2]
        net.layers[1].weight[0].copy_(tensor(w2))
        net.layers[1].bias[0].zero_()
        net.layers[2].weight[0].copy_(tensor(w3))
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(
            replacement_rate=0.4,  # 0.4 · 3 eligible = 1.2 ≥ 1: exactly one unit per layer, no draw
            maturity_threshold=0,
            decay_rate=ETA,
            util_type="adaptation",
            bias_correction=False,
        ),
        torch.Generator().manual_seed(0),
    )
    h = tensor([[1.0, 1.0, 1.0]])
    after_step(cbp, [h, h])
    first, second = seed_states(cbp)
    # layer 1: û = 1/g = [2/3, 2, 1/2] → unit 2 is replaced. Layer 2: û = 1/g = [1/2, 2, 3/5]
    # with its *old* incoming weights → unit 0 is replaced. (Had layer 1's generate zeroed column 2
    # of layer 2's weights first, g would be [1, 1/3, 2/3] and û = [1, 3, 3/2].)
    assert_values(first["bias_corrected_utility"], [2 / 3, 2.0, 0.0])
    assert_values(second["bias_corrected_utility"], [0.0, 2.0, 0.6])
    assert first["age"].tolist() == [1, 1, 0]
    assert second["age"].tolist() == [0, 1, 1]
    assert cbp.replaced_total == 2


# --- maturity and the choice of unit ------------------------------------------------------------
def test_units_with_age_at_most_maturity_are_never_eligible():
    net = hand_net()
    before = snapshot(net)
    # ρ = 0.5: 0.5 · 3 = 1.5 ≥ 1 → one unit per step once eligible, and no random draw is needed
    cbp = make_cbp(net, util_type="weight", replacement_rate=0.5, maturity_threshold=3)
    for step in range(1, 4):
        after_step(cbp, [tensor(H1)])
        assert cbp.replaced_total == 0, f"replaced at step {step} with age {step} <= m = 3"
        assert seed_states(cbp)[0]["age"].tolist() == [step] * 3
        for key, value in snapshot(net).items():
            assert torch.equal(value, before[key])
    after_step(cbp, [tensor(H1)])  # age 4 > 3
    assert cbp.replaced_total == 1
    assert seed_states(cbp)[0]["age"].tolist() == [4, 4, 0]  # û = o = [3, 2, .5]: unit 2 goes


def test_smallest_bias_corrected_utility_among_eligible_is_replaced():
    """Ages before the step [5, 2, 3], m = 3 → after the increment [6, 3, 4]: units 0 and 2 are
    eligible. o = [3, 0.1, 0.5] (utility `weight`, u was 0): u = 0.5·o and
    û = u / (1 − 0.5^a) = [1.5·64/63, 0.05·8/7, 0.25·16/15] = [1.5238, 0.0571, 0.2667].
    Unit 1 has the smallest û but is not eligible, so unit 2 is replaced."""
    net = hand_net()
    with torch.no_grad():
        net.layers[1].weight[0].copy_(tensor([[2.0, 0.1, 0.5], [-4.0, -0.1, 0.5]]))
    cbp = make_cbp(net, util_type="weight", replacement_rate=0.5, maturity_threshold=3)
    (state,) = seed_states(cbp)
    state["age"].copy_(torch.tensor([5, 2, 3]))
    after_step(cbp, [tensor(H1)])
    assert state["age"].tolist() == [6, 3, 0]
    assert_values(state["bias_corrected_utility"], [1.5 * 64 / 63, 0.05 * 8 / 7, 0.0])
    assert_values(state["utility"], [1.5, 0.05, 0.0])
    assert cbp.replaced_total == 1


# --- the generate phase -------------------------------------------------------------------------
@pytest.mark.parametrize("bias_correction", [True, False])
def test_replacement_resets_exactly_the_chosen_unit(bias_correction):
    """m = 1: nothing at step 1; at step 2 (weights W_in', W_out') û = [5/3, 4/3, 13/6] for
    `weight`, so unit 1 is replaced. Its f̂ = f̄/(1 − η²) = 1.125/0.75 = 1.5 and W_out'[:, 1] =
    [0, 2], so bias correction moves [0, 3] into the next bias."""
    net = hand_net()
    cbp = make_cbp(
        net,
        util_type="weight",
        replacement_rate=0.4,  # 0.4 · 3 = 1.2 → one unit, no draw
        maturity_threshold=1,
        bias_correction=bias_correction,
    )
    after_step(cbp, [tensor(H1)])
    assert cbp.replaced_total == 0
    set_weights(net, W_IN_2, B_IN, W_OUT_2, B_OUT)
    after_step(cbp, [tensor(H2)])
    assert cbp.replaced_total == 1

    w_in, b_in = net.layers[0].weight[0], net.layers[0].bias[0]
    w_out, b_out = net.layers[1].weight[0], net.layers[1].bias[0]
    # the replaced unit
    assert w_out[:, 1].tolist() == [0.0, 0.0]
    assert b_in[1].item() == 0.0
    bound = RELU_KAIMING_BOUND_FAN_IN_2
    assert all(abs(v) <= bound for v in w_in[1].tolist())
    assert w_in[1].tolist() != W_IN_2[1]
    # the other units are untouched
    assert w_in[0].tolist() == W_IN_2[0] and w_in[2].tolist() == W_IN_2[2]
    assert b_in[0].item() == tensor(B_IN)[0].item() and b_in[2].item() == tensor(B_IN)[2].item()
    assert w_out[:, 0].tolist() == [-1.0, 1.0] and w_out[:, 2].tolist() == [4.0, -2.0]
    # the next layer's bias: + W_out[:, i] · f̂_i with the pre-reset f̂, or unchanged
    expected_bias = [0.25, -0.75 + 3.0] if bias_correction else B_OUT
    assert_values(b_out, expected_bias)
    # its state is zero, the others' is as the hand table says
    (state,) = seed_states(cbp)
    assert state["age"].tolist() == [2, 0, 2]
    assert_values(state["utility"], [1.25, 0.0, 1.625])
    assert_values(state["bias_corrected_utility"], [5 / 3, 0.0, 13 / 6])
    assert_values(state["mean_activation"], [1.0, 0.0, 1.75])


def test_bias_correction_uses_bias_corrected_mean_activation():
    """Utility `contribution`, maturity 1, nothing replaced at step 1 (u1 = 0.5·[6, 1, .5]).
    Before step 2 the outgoing weights become W_out'' with columns [1, 1], [4, 4], [0.5, −0.5],
    so o'' = [1, 4, 0.5] and unit 2 is replaced at step 2."""
    net = hand_net()
    cbp = make_cbp(net, util_type="contribution", replacement_rate=0.4, maturity_threshold=1)
    after_step(cbp, [tensor(H1)])
    w_out = [[1.0, 4.0, 0.5], [1.0, 4.0, -0.5]]
    set_weights(net, W_IN_2, B_IN, w_out, B_OUT)
    after_step(cbp, [tensor(H2)])
    # û: u2 = 0.25·[6, 1, .5] + 0.5·o''·[1, 2, 3] = [1.5 + .5, .25 + 4, .125 + .75]; /0.75
    # → [8/3, 17/3, 7/6]: unit 2 is replaced; f̂_2 = 1.75/0.75 = 7/3 (f̄_2 alone would be 1.75)
    assert seed_states(cbp)[0]["age"].tolist() == [2, 2, 0]
    assert_values(net.layers[1].bias[0], [0.25 + 0.5 * 7 / 3, -0.75 - 0.5 * 7 / 3])
    assert net.layers[1].weight[0][:, 2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("scheme", "activation", "bound"),
    [
        ("kaiming", "tanh", 5 / 3 * math.sqrt(3 / 4)),
        ("xavier", "tanh", 5 / 3 * math.sqrt(6 / (4 + 200))),
        ("lecun", "tanh", math.sqrt(3 / 4)),
        ("default", "tanh", math.sqrt(1 / 4)),
        ("kaiming", "relu", math.sqrt(2) * math.sqrt(3 / 4)),
        ("kaiming", "swish", math.sqrt(2) * math.sqrt(3 / 4)),
        ("kaiming", "sigmoid", math.sqrt(3 / 4)),
        ("kaiming", "selu", math.sqrt(3 / 4)),  # selu: lecun
    ],
)
def test_new_incoming_weights_fill_the_init_bound(scheme, activation, bound):
    """ρ = 1 and m = 0 replace all 200 units of a 4 → 200 → 1 net: 800 fresh draws must lie in
    [−B, B] and reach close to B (P(all < 0.97·B) = 0.97^800 ≈ 3e-11), with mean |w| ≈ B/2."""
    net = MLP([4, 200, 1], activation, generators=[torch.Generator().manual_seed(0)])
    with torch.no_grad():
        net.layers[0].weight[0].fill_(100.0)  # far outside every bound: every entry must be redrawn
        net.layers[0].bias[0].fill_(1.0)
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(replacement_rate=1.0, maturity_threshold=0, init=scheme, util_type="weight"),
        torch.Generator().manual_seed(3),
    )
    after_step(cbp, [torch.zeros(5, 200)])
    assert cbp.replaced_total == 200
    weights = net.layers[0].weight[0].abs()
    assert weights.max().item() <= bound * (1 + 1e-6)
    assert weights.max().item() >= 0.97 * bound
    assert weights.mean().item() == pytest.approx(bound / 2, rel=0.06)
    assert net.layers[0].bias[0].abs().max().item() == 0.0
    assert net.layers[1].weight[0].abs().max().item() == 0.0


# --- optimizer-state reset ----------------------------------------------------------------------
def _populated_optimizer(net: MLP, kind: str) -> torch.optim.Optimizer:
    """An optimizer with state in every entry, built with lr = 0 so the hand weights stay put."""
    if kind == "adam":
        opt = Adam(net.parameters(), lr=0.0)
    elif kind == "sgd_momentum":
        opt = make_optimizer(net.parameters(), "sgd", 0.0, momentum=0.9)  # the repo's SGD
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    for step in range(2):
        for index, param in enumerate(net.parameters()):
            param.grad = torch.arange(1, param.numel() + 1, dtype=param.dtype).reshape(param.shape)
            param.grad.mul_(index + 1 + step)
        opt.step()
    return opt


def _optimizer_state(opt: torch.optim.Optimizer, net: MLP) -> list[dict[str, torch.Tensor]]:
    """The one seed's slice of each parameter's optimizer state (a scalar step count as it is)."""
    return [
        {k: v[0].clone() if v.dim() else v.clone() for k, v in opt.state[p].items()} for p in net.parameters()
    ]


@pytest.mark.parametrize("kind", ["adam", "sgd_momentum", "torch_sgd_momentum"])
@pytest.mark.parametrize("reset", [True, False])
def test_optimizer_state_of_replaced_unit(kind, reset):
    net = hand_net()
    opt = _populated_optimizer(net, kind)
    keys = ("exp_avg", "exp_avg_sq", "step") if kind == "adam" else ("momentum_buffer",)
    before = _optimizer_state(opt, net)
    for state in before:
        assert set(keys) <= set(state)
        for key in keys:
            assert (state[key] != 0).all()
    # `weight` utility, û = o = [3, 2, .5]: unit 2 is replaced at the first step
    cbp = make_cbp(
        net,
        optimizer=opt,
        util_type="weight",
        replacement_rate=0.4,
        maturity_threshold=0,
        reset_optimizer_state=reset,
    )
    after_step(cbp, [tensor(H1)])
    assert seed_states(cbp)[0]["age"].tolist() == [1, 1, 0]
    after = _optimizer_state(opt, net)
    w_in, b_in, w_out, b_out = range(4)
    for key in keys:
        if not reset:
            for index in range(4):
                assert torch.equal(after[index][key], before[index][key])
            continue
        # exactly the replaced row / entry / column are zero ...
        assert after[w_in][key][2].tolist() == [0.0, 0.0]
        assert after[b_in][key][2].item() == 0.0
        assert after[w_out][key][:, 2].tolist() == [0.0, 0.0]
        # ... every other entry unchanged
        assert torch.equal(after[w_in][key][:2], before[w_in][key][:2])
        assert torch.equal(after[b_in][key][:2], before[b_in][key][:2])
        assert torch.equal(after[w_out][key][:, :2], before[w_out][key][:, :2])
        assert torch.equal(after[b_out][key], before[b_out][key])


@pytest.mark.parametrize("repo_sgd", [True, False])
def test_optimizer_reset_with_sgd_without_momentum_is_harmless(repo_sgd):
    net = hand_net()
    if repo_sgd:
        opt = make_optimizer(net.parameters(), "sgd", 0.0)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
    for param in net.parameters():
        param.grad = torch.ones_like(param)
    opt.step()
    cbp = make_cbp(net, optimizer=opt, util_type="weight", replacement_rate=0.4, maturity_threshold=0)
    after_step(cbp, [tensor(H1)])
    assert cbp.replaced_total == 1


# --- the replacement rule -----------------------------------------------------------------------
def _wide_net(width: int = 4) -> MLP:
    return MLP([2, width, 1], "relu", generators=[torch.Generator().manual_seed(1)])


def test_accumulate_carries_the_fraction():
    """ρ·eligible = 0.1·4 = 0.4 per step (m = 0 keeps all 4 units eligible): the count replaced at
    step t is floor(0.4·t) − floor(0.4·(t − 1)), exactly, and `accumulated` holds the remainder."""
    net = _wide_net()
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(replacement_rate=0.1, maturity_threshold=0, accumulate=True, util_type="weight"),
        torch.Generator().manual_seed(0),
    )
    h = torch.ones(1, 4)
    replacing_steps = []
    for t in range(1, 21):
        before = cbp.replaced_total
        after_step(cbp, [h])
        crossed = math.floor(Fraction(2, 5) * t) - math.floor(Fraction(2, 5) * (t - 1))
        assert cbp.replaced_total - before == crossed, f"step {t}"
        if crossed:
            replacing_steps.append(t)
        remainder = float(Fraction(2, 5) * t - math.floor(Fraction(2, 5) * t))
        assert float(seed_states(cbp)[0]["accumulated"]) == pytest.approx(remainder, abs=1e-12)
    assert replacing_steps == [3, 5, 8, 10, 13, 15, 18, 20]


def test_accumulate_does_not_draw_from_the_generator_to_decide():
    net = _wide_net()
    gen = torch.Generator().manual_seed(0)
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(replacement_rate=0.1, maturity_threshold=0, accumulate=True, util_type="weight"),
        gen,
    )
    state = gen.get_state()
    after_step(cbp, [torch.ones(1, 4)])  # 0.4: no replacement, so nothing to draw at all
    assert torch.equal(gen.get_state(), state)


def test_probabilistic_rule_follows_the_counter_stream():
    """r = 0.1·4 = 0.4 < 1: one unit iff the step's U(0,1) draw (the seed's counter stream 1, this
    group's, at the step) is below 0.4."""
    net = _wide_net()
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(replacement_rate=0.1, maturity_threshold=0, accumulate=False, util_type="weight"),
        torch.Generator().manual_seed(12345),
    )
    outcomes = []
    for _ in range(40):
        draw = counter_rng.uniform(cbp.keys, cbp.steps, 1, 1, torch.float64)[0, 0].item()
        before = cbp.replaced_total
        after_step(cbp, [torch.ones(1, 4)])
        expected = 1 if draw < 0.4 else 0
        assert cbp.replaced_total - before == expected
        outcomes.append(expected)
    assert 0 < sum(outcomes) < len(outcomes)  # both branches were exercised
    assert float(seed_states(cbp)[0]["accumulated"]) == 0.0


def test_probabilistic_rule_with_rate_at_least_one_replaces_int_r():
    net = _wide_net(6)
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(replacement_rate=0.45, maturity_threshold=0, util_type="weight"),
        torch.Generator().manual_seed(0),
    )
    after_step(cbp, [torch.ones(1, 6)])  # r = 0.45·6 = 2.7 → int(r) = 2
    assert cbp.replaced_total == 2
    assert int((seed_states(cbp)[0]["age"] == 0).sum()) == 2


@pytest.mark.parametrize(("base", "per_step"), [("eligible", 0.1), ("width", 0.4)])
def test_replacement_base(base, per_step):
    """Width 4 with only unit 0 eligible (ages [5, 0, 0, 0], m = 3): ρ = 0.1 accumulates
    0.1 · 1 per step on the `eligible` base and 0.1 · 4 on the `width` base."""
    net = _wide_net()
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(
            replacement_rate=0.1,
            maturity_threshold=3,
            accumulate=True,
            util_type="weight",
            replacement_base=base,
        ),
        torch.Generator().manual_seed(0),
    )
    seed_states(cbp)[0]["age"].copy_(torch.tensor([5, 0, 0, 0]))
    after_step(cbp, [torch.ones(1, 4)])
    assert float(seed_states(cbp)[0]["accumulated"]) == pytest.approx(per_step, abs=1e-12)
    after_step(cbp, [torch.ones(1, 4)])
    assert float(seed_states(cbp)[0]["accumulated"]) == pytest.approx(2 * per_step, abs=1e-12)
    assert cbp.replaced_total == 0


def test_width_base_accumulates_only_on_steps_with_an_eligible_unit():
    net = _wide_net()
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(
            replacement_rate=0.1,
            maturity_threshold=2,
            accumulate=True,
            util_type="weight",
            replacement_base="width",
        ),
        torch.Generator().manual_seed(0),
    )
    for _ in range(2):
        after_step(cbp, [torch.ones(1, 4)])
        assert float(seed_states(cbp)[0]["accumulated"]) == 0.0
    after_step(cbp, [torch.ones(1, 4)])  # ages 3 > 2
    assert float(seed_states(cbp)[0]["accumulated"]) == pytest.approx(0.4, abs=1e-12)


def test_probabilistic_width_base_uses_layer_width():
    """One eligible unit of 4, ρ = 0.3: `eligible` gives r = 0.3 (a draw), `width` gives
    r = 1.2 → one unit with no draw; the only eligible unit (unit 0) is the one replaced."""
    net = _wide_net()
    cbp = ContinualBackprop(
        net.unit_groups(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        CBPConfig(
            replacement_rate=0.3,
            maturity_threshold=3,
            util_type="weight",
            replacement_base="width",
        ),
        torch.Generator().manual_seed(0),
    )
    seed_states(cbp)[0]["age"].copy_(torch.tensor([5, 0, 0, 0]))
    after_step(cbp, [torch.ones(1, 4)])
    assert seed_states(cbp)[0]["age"].tolist() == [0, 1, 1, 1]
    assert cbp.replaced_total == 1


# --- unit groups with several outgoing columns per unit ------------------------------------------
def _flattened_group():
    """A Linear(2, 3) feeding a Linear(6, 2), each unit owning two consecutive columns."""
    incoming, outgoing = nn.Linear(2, 3), nn.Linear(6, 2)
    with torch.no_grad():
        incoming.weight.copy_(tensor([[1.0, -1.0], [2.0, 0.0], [0.5, 0.5]]))  # g = [1, 1, .5]
        incoming.bias.copy_(tensor([0.1, 0.2, 0.3]))
        outgoing.weight.copy_(tensor([[1.0, -3.0, 2.0, 2.0, -0.5, 0.5], [1.0, 1.0, 0.0, -4.0, 0.5, 0.5]]))
        outgoing.bias.copy_(tensor([0.1, 0.2]))
    return UnitGroup.of_modules("flat", incoming, outgoing, "relu", fan_out_per_unit=2), incoming, outgoing


def test_unit_group_geometry_with_two_columns_per_unit():
    group, _, outgoing = _flattened_group()
    assert (group.seeds, group.width, group.fan_in, group.fan_out) == (1, 3, 2, 3)
    # unit axis 2, a unit's two columns last: unit 0 owns columns 0-1, unit 2 columns 4-5
    by_unit = group.outgoing_by_unit()
    assert by_unit.shape == (1, 2, 3, 2)
    assert by_unit[0, :, 2].tolist() == outgoing.weight[:, 4:6].tolist()
    by_unit[0, 1, 2, 1] = 7.0  # a view: writes reach the layer
    assert outgoing.weight[1, 5].item() == 7.0
    by_unit[0, 1, 2, 1] = 0.5
    # mean |w| over both outputs and both columns: (1+3+1+1)/4, (2+2+0+4)/4, (4·0.5)/4
    assert_values(group.outgoing_magnitude(), [[1.5, 2.0, 0.5]])
    assert_values(group.incoming_magnitude(), [[1.0, 1.0, 0.5]])


def test_unit_group_geometry_of_an_mlp():
    net = MLP([2, 3, 3, 1], "tanh", generators=[torch.Generator().manual_seed(0)])
    groups = net.unit_groups()
    assert [g.name for g in groups] == ["hidden0", "hidden1"]
    assert (
        groups[0].incoming.tensor is net.layers[0].weight
        and groups[0].outgoing.tensor is net.layers[1].weight
    )
    assert (
        groups[1].incoming.tensor is net.layers[1].weight
        and groups[1].outgoing.tensor is net.layers[2].weight
    )
    assert groups[0].incoming_bias.tensor is net.layers[0].bias
    assert groups[0].outgoing_bias.tensor is net.layers[1].bias
    assert groups[0].incoming.of().shape == (1, 3, 2) and groups[1].outgoing.of().shape == (1, 1, 3)
    assert all(g.activation == "tanh" and g.fan_out_per_unit == 1 and g.seeds == 1 for g in groups)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_cbp_on_two_columns_per_unit(bias_correction):
    """h (batch 2, 3 units, 2 positions) has per-unit means [2, 1, 1]; `contribution` takes the
    product per column, then the mean over the unit's columns: column magnitudes [1, 2 | 1, 3 | .5, .5]
    times mean|h| per column [1, 3 | 2, 0 | 1, 1] → û = [3.5, 1, 0.5] → unit 2 (columns 4 and 5) is
    replaced. Bias correction adds f̂_2 · (sum of its columns per output) = 1 · [0, 1]."""
    group, incoming, outgoing = _flattened_group()
    params = [incoming.weight, incoming.bias, outgoing.weight, outgoing.bias]
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.5)
    for index, param in enumerate(params):
        param.grad = torch.full_like(param, float(index + 1))
    opt.step()
    old_out = outgoing.weight.detach().clone()
    old_in = incoming.weight.detach().clone()
    cbp = ContinualBackprop(
        [group],
        opt,
        CBPConfig(
            replacement_rate=0.4,
            maturity_threshold=0,
            decay_rate=ETA,
            util_type="contribution",
            bias_correction=bias_correction,
        ),
        torch.Generator().manual_seed(0),
    )
    h = tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]], [[1.0, 3.0], [4.0, 0.0], [0.0, 0.0]]])
    cbp.after_step([h])
    (state,) = seed_states(cbp)
    assert_values(state["utility"], [1.75, 0.5, 0.0])  # (1 − η)·û, η = 0.5
    assert state["age"].tolist() == [1, 1, 0]
    weight = outgoing.weight
    assert weight[:, 4:6].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert torch.equal(weight[:, :4], old_out[:, :4])
    assert torch.equal(incoming.weight[:2], old_in[:2])
    assert incoming.bias[2].item() == 0.0
    assert_values(outgoing.bias, [0.1, 1.2] if bias_correction else [0.1, 0.2])
    buffers = [opt.state[p]["momentum_buffer"] for p in params]
    assert buffers[0][2].tolist() == [0.0, 0.0] and (buffers[0][:2] == 1.0).all()
    assert buffers[1].tolist() == [2.0, 2.0, 0.0]
    assert (buffers[2][:, 4:6] == 0.0).all() and (buffers[2][:, :4] == 3.0).all()
    assert buffers[3].tolist() == [4.0, 4.0]


# --- checkpointing ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        dict(
            util_type="adaptable_contribution",
            replacement_rate=0.2,
            maturity_threshold=2,
            accumulate=False,
        ),
        dict(util_type="random", replacement_rate=0.15, maturity_threshold=1, accumulate=True),
    ],
)
def test_state_dict_round_trip_continues_identically(settings):
    cfg = CBPConfig(decay_rate=0.9, **settings)

    def build():
        net = MLP([3, 5, 4, 2], "relu", generators=[torch.Generator().manual_seed(4)])
        opt = Adam(net.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(99)
        return net, opt, gen, ContinualBackprop(net.unit_groups(), opt, cfg, gen)

    data = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 3, generator=data), torch.randn(4, 2, generator=data)) for _ in range(16)]

    def step(net, opt, cbp, x, y):
        out, acts = net(x.unsqueeze(0))
        opt.zero_grad()
        torch.nn.functional.mse_loss(out, y.unsqueeze(0)).backward()
        opt.step()
        cbp.after_step([a.detach() for a in acts])

    net, opt, gen, cbp = build()
    for x, y in batches[:8]:
        step(net, opt, cbp, x, y)
    buffer = io.BytesIO()
    torch.save(
        {
            "net": net.state_dict(),
            "opt": opt.state_dict(),
            "cbp": cbp.state_dict(),
            "gen": gen.get_state(),
        },
        buffer,
    )
    replaced_at_checkpoint = cbp.replaced_total
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    net2, opt2, gen2, cbp2 = build()
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    cbp2.load_state_dict(saved["cbp"])
    gen2.set_state(saved["gen"])
    for x, y in batches[8:]:
        step(net, opt, cbp, x, y)
        step(net2, opt2, cbp2, x, y)
    assert cbp.replaced_total > replaced_at_checkpoint  # replacements happened after the checkpoint
    assert cbp2.replaced_total == cbp.replaced_total
    for key, value in net.state_dict().items():
        assert torch.equal(net2.state_dict()[key], value), key
    for mine, theirs in zip(cbp.state, cbp2.state, strict=True):
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), key


def test_state_dict_is_a_copy_and_holds_everything():
    net = hand_net()
    cbp = make_cbp(net, util_type="weight", replacement_rate=0.1, accumulate=True, maturity_threshold=0)
    after_step(cbp, [tensor(H1)])
    saved = cbp.state_dict()
    assert set(saved["groups"][0]) == {
        "utility",
        "bias_corrected_utility",
        "mean_activation",
        "age",
        "accumulated",
    }
    assert float(saved["groups"][0]["accumulated"]) == pytest.approx(0.3)
    after_step(cbp, [tensor(H1)])
    assert saved["groups"][0]["age"].tolist() == [[1, 1, 1]]  # not aliased to the live state
    fresh = make_cbp(
        hand_net(), util_type="weight", replacement_rate=0.1, accumulate=True, maturity_threshold=0
    )
    fresh.load_state_dict(saved)
    assert fresh.state[0]["age"].tolist() == [[1, 1, 1]]
    assert float(fresh.state[0]["accumulated"]) == pytest.approx(0.3)


def test_load_state_dict_refuses_another_config():
    saved = make_cbp(hand_net(), util_type="weight").state_dict()
    other = make_cbp(hand_net(), util_type="contribution")
    with pytest.raises(ValueError):
        other.load_state_dict(saved)
