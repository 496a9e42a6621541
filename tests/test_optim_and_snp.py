"""Optimizers, shrink-and-perturb, the Backprop learner and initialisation (spec/algorithms.md,
spec/networks.md), each pinned on small cases computed by hand or against PyTorch's reference
optimizers."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from lop_ray.algos import (
    Adam,
    Backprop,
    ShrinkAndPerturb,
    counter_rng,
    make_optimizer,
    reset_optimizer_entries,
)
from lop_ray.nets import MLP, init_bound, init_gain
from lop_ray.nets.activations import make_activation
from lop_ray.nets.units import SeedView

# Tolerances for "matches torch.optim" over 20 steps (parameters of magnitude ~1): only the order
# of floating-point operations differs (per-element vs per-tensor bias correction), so float64
# agrees to ~1e-16 (measured 4e-16) and float32 to a few ulps (measured 1.2e-7). A float32 bias
# correction 1 − β2^t computed with β2 rounded to float32 is 1.3e-5 off at t = 1 and gave 8.5e-7.
ATOL = {torch.float64: 1e-14, torch.float32: 5e-7}


def _train(factory, dtype: torch.dtype, steps: int = 20):
    net = MLP([3, 4, 2], "tanh", generators=[torch.Generator().manual_seed(0)]).to(dtype)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.1)  # non-zero biases so that weight decay acts on every tensor
    opt = factory(net.parameters())
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(1, 5, 3, generator=data).to(dtype)  # one seed's batch of 5
        y = torch.randn(1, 5, 2, generator=data).to(dtype)
        out, _ = net(x)
        opt.zero_grad()
        nn.functional.mse_loss(out, y).backward()
        opt.step()
    return net, opt


REFERENCE_CASES = {
    "adam": (
        lambda p: make_optimizer(p, "adam", 0.01),
        lambda p: torch.optim.Adam(p, lr=0.01, foreach=False),
    ),
    "adam_coupled_l2": (
        lambda p: make_optimizer(p, "adam", 0.01, weight_decay=0.1, beta1=0.8, beta2=0.99, eps=1e-6),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6, foreach=False),
    ),
    "adamw": (
        lambda p: make_optimizer(p, "adamw", 0.01, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, foreach=False),
    ),
    "sgd_momentum_l2": (
        lambda p: make_optimizer(p, "sgd", 0.05, weight_decay=0.01, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.01, momentum=0.9, foreach=False),
    ),
}


# --- Adam ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_matches_torch_reference_without_resets(case, dtype):
    mine, reference = REFERENCE_CASES[case]
    net_a, opt_a = _train(mine, dtype)
    net_b, opt_b = _train(reference, dtype)
    start = MLP([3, 4, 2], "tanh", generators=[torch.Generator().manual_seed(0)])
    for a, b, s in zip(net_a.parameters(), net_b.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=ATOL[dtype], rtol=0)
        assert (a.double() - s.double() - 0.1).abs().max() > 1e-3  # they did move
    if case.startswith("adam"):
        for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
            mine_state, ref_state = opt_a.state[a], opt_b.state[b]
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(mine_state[key], ref_state[key], atol=ATOL[dtype], rtol=1e-6)
            assert (mine_state["step"] == 20).all()  # one count per element
            assert mine_state["step"].shape == a.shape


def test_make_optimizer_builds_the_named_optimizers():
    params = [nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(params, "sgd", 0.1, weight_decay=0.01, momentum=0.9)
    assert isinstance(sgd, torch.optim.Optimizer)  # its updates are checked against torch's SGD above
    assert sgd.defaults["lr"] == 0.1
    assert sgd.defaults["momentum"] == 0.9
    assert sgd.defaults["weight_decay"] == 0.01
    adam = make_optimizer(params, "adam", 0.001, weight_decay=0.1, beta1=0.8, beta2=0.9, eps=1e-6)
    assert isinstance(adam, Adam)
    assert adam.defaults["betas"] == (0.8, 0.9)
    assert adam.defaults["eps"] == 1e-6
    assert adam.defaults["weight_decay"] == 0.1
    assert adam.defaults["decoupled_weight_decay"] is False
    adamw = make_optimizer(params, "adamw", 0.001, weight_decay=0.1)
    assert isinstance(adamw, Adam) and adamw.defaults["decoupled_weight_decay"] is True
    with pytest.raises(ValueError):
        make_optimizer(params, "rmsprop", 0.1)


def test_sgd_coupled_weight_decay_by_hand():
    """w ← w − α(g + λw): w = 2, g = 3 (loss 3w), α = 0.1, λ = 0.5 → 2 − 0.1·(3 + 1) = 1.6."""
    w = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = make_optimizer([w], "sgd", 0.1, weight_decay=0.5)
    (3 * w).sum().backward()
    opt.step()
    assert w.item() == pytest.approx(1.6, abs=1e-15)


def test_adam_first_steps_by_hand():
    """Adam, β = (0.9, 0.999), lr = 0.1, ε = 0. For a constant gradient g the bias-corrected
    moments are exactly m̂ = g and v̂ = g², so every step moves w by lr·sign(g)... then one step
    with coupled L2 is computed from the moment recursions by hand."""
    w = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = Adam([w], lr=0.1, eps=0.0)
    for expected in ([0.9, -0.9], [0.8, -0.8], [0.7, -0.7]):
        opt.zero_grad()
        (w * torch.tensor([3.0, -0.5], dtype=torch.float64)).sum().backward()
        opt.step()
        assert w.tolist() == pytest.approx(expected, abs=1e-12)
    # coupled L2 enters the moments: g = 3 + λ·w, with λ = 1 and w = 0.7 → g = 3.7
    opt.param_groups[0]["weight_decay"] = 1.0
    opt.zero_grad()
    (w * torch.tensor([3.0, -0.5], dtype=torch.float64)).sum().backward()
    opt.step()
    m = 0.9 * _moment(0.9, [3.0, 3.0, 3.0]) + 0.1 * 3.7
    v = 0.999 * _moment(0.999, [9.0, 9.0, 9.0]) + 0.001 * 3.7**2
    update = 0.1 * (m / (1 - 0.9**4)) / math.sqrt(v / (1 - 0.999**4))
    assert w[0].item() == pytest.approx(0.7 - update, abs=1e-12)


def _moment(beta: float, values: list[float]) -> float:
    m = 0.0
    for value in values:
        m = beta * m + (1 - beta) * value
    return m


def _scalar_adam_updates(grads, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Plain-Python Adam on one scalar: the update applied at each step."""
    m = v = 0.0
    updates = []
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        updates.append(-lr * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps))
    return updates


GRADS = [[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]]  # per-row gradient coefficients


def _grad_at(step: int) -> torch.Tensor:
    """Gradient of step `step`: rows scaled differently each step so Adam's updates differ from lr."""
    scale = [1.0, -0.3, 2.0, 0.7, -1.5][step % 5]
    return torch.tensor(GRADS) * torch.tensor([[scale], [1.0 + step], [0.5 * scale]])


def test_reset_entries_restart_adam_per_element():
    lr = 0.01
    p = nn.Parameter(torch.zeros(3, 2))
    opt = Adam([p], lr=lr)
    grads = [_grad_at(t) for t in range(6)]
    for t in range(5):
        p.grad = grads[t].clone()
        opt.step()
    reset_optimizer_entries(opt, p, (torch.tensor([1]),))
    state = opt.state[p]
    assert state["step"].tolist() == [[5.0, 5.0], [0.0, 0.0], [5.0, 5.0]]
    assert state["exp_avg"][1].tolist() == [0.0, 0.0]
    assert state["exp_avg_sq"][1].tolist() == [0.0, 0.0]
    assert (state["exp_avg"][[0, 2]] != 0).all()
    before = p.detach().clone()
    p.grad = grads[5].clone()
    opt.step()
    delta = p.detach() - before
    # the reset row takes a fresh first Adam step: |Δ| = lr·|g|/(|g| + ε) = lr to 1e-8 relative
    for value, g in zip(delta[1].tolist(), grads[5][1].tolist(), strict=True):
        assert abs(value) == pytest.approx(lr, rel=1e-6)
        assert math.copysign(1.0, value) == -math.copysign(1.0, g)
    # the other rows continue their own 6-step history, as plain-Python Adam computes it
    for row in (0, 2):
        for col in range(2):
            history = [float(grads[t][row, col]) for t in range(6)]
            expected = _scalar_adam_updates(history, lr)[-1]
            assert delta[row, col].item() == pytest.approx(expected, rel=1e-5)
            assert abs(abs(expected) - lr) > 0.01 * lr  # i.e. not a fresh step
    assert state["step"].tolist() == [[6.0, 6.0], [1.0, 1.0], [6.0, 6.0]]


@pytest.mark.parametrize("repo_sgd", [True, False])
def test_reset_columns_and_sgd_momentum(repo_sgd):
    lr, mu = 0.1, 0.9
    p = nn.Parameter(torch.zeros(2, 3))
    if repo_sgd:
        opt = make_optimizer([p], "sgd", lr, momentum=mu)
    else:
        opt = torch.optim.SGD([p], lr=lr, momentum=mu)
    g1 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    p.grad = g1.clone()
    opt.step()
    reset_optimizer_entries(opt, p, (slice(None), torch.tensor([0, 2])))
    buffer = opt.state[p]["momentum_buffer"]
    assert buffer.tolist() == [[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]
    before = p.detach().clone()
    g2 = torch.full((2, 3), 10.0)
    p.grad = g2.clone()
    opt.step()
    delta = p.detach() - before
    # reset columns: buffer = 0·μ + g = 10 → Δ = −1; kept column: buffer = 0.9·2 + 10 (row 0)
    assert delta[:, 0].tolist() == pytest.approx([-1.0, -1.0])
    assert delta[:, 2].tolist() == pytest.approx([-1.0, -1.0])
    assert delta[:, 1].tolist() == pytest.approx([-lr * (mu * 2 + 10), -lr * (mu * 5 + 10)])


@pytest.mark.parametrize("repo_sgd", [True, False])
def test_reset_entries_without_state_is_a_no_op(repo_sgd):
    p = nn.Parameter(torch.ones(3))
    adam = Adam([p], lr=0.1)
    reset_optimizer_entries(adam, p, (torch.tensor([0]),))  # no step yet: no state to reset
    assert len(adam.state) == 0 or not adam.state[p]
    # no momentum: no momentum buffer to reset
    sgd = make_optimizer([p], "sgd", 0.1) if repo_sgd else torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    sgd.step()
    reset_optimizer_entries(sgd, p, (torch.tensor([0]),))
    assert sgd.state[p].get("momentum_buffer") is None


def test_adam_checkpoint_keeps_per_element_steps():
    p = nn.Parameter(torch.zeros(3, 2))
    opt = Adam([p], lr=0.01)
    for t in range(3):
        p.grad = _grad_at(t)
        opt.step()
    reset_optimizer_entries(opt, p, (torch.tensor([2]),))
    buffer = io.BytesIO()
    torch.save({"p": p.detach().clone(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    q = nn.Parameter(saved["p"].clone())
    opt2 = Adam([q], lr=0.01)
    opt2.load_state_dict(saved["opt"])
    assert opt2.state[q]["step"].tolist() == [[3.0, 3.0], [3.0, 3.0], [0.0, 0.0]]
    for t in range(3, 6):
        p.grad, q.grad = _grad_at(t), _grad_at(t)
        opt.step()
        opt2.step()
    assert torch.equal(p, q)


# --- shrink and perturb -------------------------------------------------------------------------
def test_perturb_adds_counter_noise_of_the_given_scale():
    """Each seed's noise at step t is the counter stream's normals for (its key, t), laid over
    its parameters in order; parameters not given are untouched."""
    a, b = nn.Parameter(torch.ones(2, 3, 2)), nn.Parameter(torch.full((2, 4), -2.0))  # 2 seeds
    untouched = nn.Parameter(torch.zeros(5))
    keys = counter_rng.seed_keys([3, 8])
    snp = ShrinkAndPerturb([SeedView.whole(a), SeedView.whole(b)], perturb_scale=0.01, keys=keys)
    for step in range(2):
        before_a, before_b = a.detach().clone(), b.detach().clone()
        snp.after_step([])
        noise = counter_rng.normal(keys, step, ShrinkAndPerturb.stream, 10)  # (2 seeds, 6 + 4)
        torch.testing.assert_close(
            a.detach(), before_a + 0.01 * noise[:, :6].reshape(2, 3, 2), atol=1e-7, rtol=0
        )
        torch.testing.assert_close(b.detach(), before_b + 0.01 * noise[:, 6:], atol=1e-7, rtol=0)
    assert untouched.tolist() == [0.0] * 5
    assert snp.state_dict() == {"steps": 2}


def test_perturb_a_seed_as_it_is_alone():
    """Seed 8's parameters move the same in a batch with seed 3 as alone (S = 1, a module's
    parameter seen through `SeedView.split`)."""
    pair = nn.Parameter(torch.zeros(2, 4, 3))
    alone = nn.Parameter(torch.zeros(4, 3))
    batch = ShrinkAndPerturb([SeedView.whole(pair)], 0.1, counter_rng.seed_keys([3, 8]))
    single = ShrinkAndPerturb([SeedView.split(alone)], 0.1, counter_rng.seed_keys([8]))
    for _ in range(3):
        batch.after_step([])
        single.after_step([])
    assert torch.equal(pair[1], alone) and not torch.equal(pair[0], alone)


def test_perturb_noise_statistics():
    """200×200 = 40,000 draws: the sample std is σ within 2% and the mean 0 within 4 σ/√n."""
    sigma = 0.003
    p = nn.Parameter(torch.zeros(200, 200, dtype=torch.float64))
    ShrinkAndPerturb([SeedView.split(p)], sigma, counter_rng.seed_keys([0])).after_step([])
    assert p.std().item() == pytest.approx(sigma, rel=0.02)
    assert abs(p.mean().item()) < 4 * sigma / 200


def test_perturb_is_reproducible_from_the_seed():
    def run(seed):
        net = MLP([3, 4, 1], "relu", generators=[torch.Generator().manual_seed(0)])
        snp = ShrinkAndPerturb(net.parameter_views(), 0.1, counter_rng.seed_keys([seed]))
        for _ in range(3):
            snp.after_step([])
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# --- the Backprop learner -----------------------------------------------------------------------
W_IN = [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]]
B_IN = [0.1, -0.2, 0.3]
W_OUT = [[2.0, -1.0, 0.5]]
B_OUT = [0.25]


def _hand_net() -> MLP:
    net = MLP([2, 3, 1], "relu", generators=[torch.Generator().manual_seed(0)])
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor(W_IN))
        net.layers[0].bias.copy_(torch.tensor(B_IN))
        net.layers[1].weight.copy_(torch.tensor(W_OUT))
        net.layers[1].bias.copy_(torch.tensor(B_OUT))
    return net


class Recorder:
    def __init__(self, name: str, log: list, net: MLP) -> None:
        self.name, self.log, self.net = name, log, net

    def after_step(self, activations):
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.log.append((self.name, [a.clone() for a in activations], weights, activations))

    def state_dict(self):
        return {"name": self.name}

    def load_state_dict(self, state):
        self.name = state["name"]


SGD_FACTORIES = {
    "lop_ray_sgd": lambda params: make_optimizer(params, "sgd", 0.1),
    "torch_sgd": lambda params: torch.optim.SGD(params, lr=0.1),
}


@pytest.mark.parametrize("optimizer", sorted(SGD_FACTORIES))
def test_backprop_learn_by_hand(optimizer):
    """x = [1, 0.5]: pre-activation W_in·x + b = [0.1, 0.55, 0.8] (all positive), output
    2·0.1 − 0.55 + 0.5·0.8 + 0.25 = 0.3, target 1.3 → loss 1. dL/dout = −2, so
    ∇W_out = −2·h = [−0.2, −1.1, −1.6], ∇b_out = −2, ∇h = −2·W_out = [−4, 2, −1] = ∇b_in,
    ∇W_in = ∇h ⊗ x. SGD with lr 0.1 then gives the weights below; interventions run after it.
    (The repo's SGD takes the gradients as a list; any torch optimizer goes through `.grad`.)"""
    net = _hand_net()
    log: list = []
    learner = Backprop(
        net,
        SGD_FACTORIES[optimizer](net.parameters()),
        nn.functional.mse_loss,
        [Recorder("first", log, net), Recorder("second", log, net)],
    )
    x, y = torch.tensor([[[1.0, 0.5]]]), torch.tensor([[[1.3]]])
    loss, output = learner.learn(x, y)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    assert output.shape == (1, 1, 1) and output.item() == pytest.approx(0.3, abs=1e-6)
    assert not loss.requires_grad and not output.requires_grad
    expected = {
        "layers.0.weight": [[1.4, -1.8], [0.3, 0.4], [-0.9, 3.05]],
        "layers.0.bias": [0.5, -0.4, 0.4],
        "layers.1.weight": [[2.02, -0.89, 0.66]],
        "layers.1.bias": [0.45],
    }
    for key, value in expected.items():
        torch.testing.assert_close(net.state_dict()[key], torch.tensor([value]), atol=1e-6, rtol=0)
    # the interventions ran after the optimizer step, in order, on this step's detached activations
    assert [entry[0] for entry in log] == ["first", "second"]
    for _, activations, weights, live in log:
        assert len(activations) == 1
        torch.testing.assert_close(activations[0], torch.tensor([[[0.1, 0.55, 0.8]]]))
        assert not live[0].requires_grad
        for key, value in expected.items():
            torch.testing.assert_close(weights[key], torch.tensor([value]), atol=1e-6, rtol=0)
    # the next loss is that of the updated network: h = [1, 0.1, 1.025], out = 3.0575
    loss, output = learner.learn(x, y)
    assert output.item() == pytest.approx(3.0575, abs=1e-5)
    assert loss.item() == pytest.approx(1.7575**2, abs=1e-5)


def test_backprop_interventions_see_the_changes_of_earlier_ones():
    net = _hand_net()
    log: list = []

    class Zero:
        def after_step(self, activations):
            with torch.no_grad():
                net.layers[1].bias.zero_()

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    learner = Backprop(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        nn.functional.mse_loss,
        [Zero(), Recorder("r", log, net)],
    )
    learner.learn(torch.tensor([[[1.0, 0.5]]]), torch.tensor([[[1.3]]]))
    assert log[0][2]["layers.1.bias"].tolist() == [[0.0]]


def test_backprop_state_dict_round_trip_and_mismatch():
    net = _hand_net()
    learner = Backprop(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), nn.functional.mse_loss)
    learner.learn(torch.tensor([[[1.0, 0.5]]]), torch.tensor([[[1.3]]]))
    # through bytes, as checkpoints are: state_dict() holds live references (PyTorch's convention)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    other_net = _hand_net()
    other = Backprop(
        other_net, torch.optim.SGD(other_net.parameters(), lr=0.1, momentum=0.9), nn.functional.mse_loss
    )
    other.load_state_dict(saved)
    for _ in range(2):
        a = learner.learn(torch.tensor([[[0.3, -1.0]]]), torch.tensor([[[0.2]]]))[0]
        b = other.learn(torch.tensor([[[0.3, -1.0]]]), torch.tensor([[[0.2]]]))[0]
        assert a.item() == b.item()
    with_intervention = Backprop(
        _hand_net(),
        torch.optim.SGD(net.parameters(), lr=0.1),
        nn.functional.mse_loss,
        [Recorder("r", [], net)],
    )
    with pytest.raises(ValueError):
        with_intervention.load_state_dict(saved)


# --- activations and initialisation -------------------------------------------------------------
GAINS = {
    "relu": math.sqrt(2.0),
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "swish": math.sqrt(2.0),
    "elu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0),  # initialised as if its negative slope were 0
    "selu": 1.0,  # lecun
    "linear": 1.0,
}


@pytest.mark.parametrize("activation", sorted(GAINS))
def test_init_gain(activation):
    assert init_gain(activation) == pytest.approx(GAINS[activation], rel=1e-12)


@pytest.mark.parametrize("activation", sorted(GAINS))
def test_init_bound_formulas(activation):
    fan_in, fan_out = 4, 6
    gain = GAINS[activation]
    assert init_bound("kaiming", activation, fan_in, fan_out) == pytest.approx(gain * math.sqrt(3 / 4))
    assert init_bound("xavier", activation, fan_in, fan_out) == pytest.approx(gain * math.sqrt(6 / 10))
    assert init_bound("lecun", activation, fan_in, fan_out) == pytest.approx(math.sqrt(3 / 4))
    assert init_bound("default", activation, fan_in, fan_out) == pytest.approx(0.5)


def test_init_bound_examples_by_hand():
    assert init_bound("kaiming", "relu", 20, 5) == pytest.approx(math.sqrt(0.3))  # √2·√(3/20)
    assert init_bound("kaiming", "tanh", 3, 7) == pytest.approx(5 / 3)  # (5/3)·√(3/3)
    assert init_bound("xavier", "sigmoid", 2, 4) == 1.0  # √(6/6)
    assert init_bound("kaiming", "selu", 12, 1) == 0.5  # √(3/12)
    with pytest.raises(ValueError):
        init_bound("orthogonal", "relu", 4, 4)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("relu", nn.ReLU),
        ("tanh", nn.Tanh),
        ("sigmoid", nn.Sigmoid),
        ("elu", nn.ELU),
        ("leaky_relu", nn.LeakyReLU),
        ("swish", nn.SiLU),
        ("selu", nn.SELU),
    ],
)
def test_make_activation(name, module):
    assert isinstance(make_activation(name), module)


def test_make_activation_rejects_unknown():
    with pytest.raises(ValueError):
        make_activation("gelu-ish")


def test_mlp_forward_by_hand():
    """tanh net: h = tanh([0.1, 0.55, 0.8]), out = W_out·h + 0.25, one activation per hidden layer."""
    net = MLP([2, 3, 1], "tanh", generators=[torch.Generator().manual_seed(0)])
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor(W_IN))
        net.layers[0].bias.copy_(torch.tensor(B_IN))
        net.layers[1].weight.copy_(torch.tensor(W_OUT))
        net.layers[1].bias.copy_(torch.tensor(B_OUT))
    out, activations = net(torch.tensor([[[1.0, 0.5]]]))
    h = [math.tanh(0.1), math.tanh(0.55), math.tanh(0.8)]
    assert len(activations) == 1
    assert activations[0][0].tolist()[0] == pytest.approx(h, abs=1e-6)
    assert out.item() == pytest.approx(2 * h[0] - h[1] + 0.5 * h[2] + 0.25, abs=1e-6)
    deep = MLP([2, 3, 4, 5, 1], "relu", generators=[torch.Generator().manual_seed(0)])
    _, activations = deep(torch.ones(1, 7, 2))
    assert [tuple(a.shape) for a in activations] == [(1, 7, 3), (1, 7, 4), (1, 7, 5)]
    with pytest.raises(ValueError):
        MLP([3])


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "elu", "leaky_relu", "swish", "selu"])
def test_mlp_initialisation(activation):
    """A 50 → 400 → 300 net: hidden weights U(±g·√(3/50)) (selu: PyTorch's default U(±√(1/50))),
    output weights U(±√(3/400)) (linear gain), every bias 0. With 20,000 and 120,000 draws the
    largest |w| is within 1% of the bound and mean |w| within 3% of bound/2."""
    net = MLP([50, 400, 300], activation, generators=[torch.Generator().manual_seed(0)])
    hidden, output = net.layers
    if activation == "selu":
        hidden_bound = math.sqrt(1 / 50)
    else:
        hidden_bound = GAINS[activation] * math.sqrt(3 / 50)
    output_bound = math.sqrt(3 / 400)
    for layer, bound in ((hidden, hidden_bound), (output, output_bound)):
        magnitude = layer.weight.detach().abs()
        assert magnitude.max().item() <= bound * (1 + 1e-6)
        assert magnitude.max().item() >= 0.99 * bound
        assert magnitude.mean().item() == pytest.approx(bound / 2, rel=0.03)
        assert layer.weight.mean().abs().item() < 0.02 * bound
        assert layer.bias.abs().max().item() == 0.0, "biases start at 0"
    assert isinstance(net.activation, type(make_activation(activation)))


def test_mlp_initialisation_depends_on_the_generator_only():
    def weights(seed):
        net = MLP([20, 5, 1], "relu", generators=[torch.Generator().manual_seed(seed)])
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))


def test_mlp_unit_groups_follow_the_layers():
    net = MLP([784, 20, 20, 20, 10], "relu", generators=[torch.Generator().manual_seed(0)])
    groups = net.unit_groups()
    assert len(groups) == 3
    assert [g.width for g in groups] == [20, 20, 20]
    assert [g.fan_in for g in groups] == [784, 20, 20]
    assert groups[-1].outgoing.tensor is net.layers[-1].weight


def test_perturb_a_large_seed_from_its_own_generator(monkeypatch):
    """Beyond `generator_limit` values per seed the noise comes from each seed's generator: a seed is
    perturbed as alone in any batch, and resumes exactly from its state."""
    monkeypatch.setattr(ShrinkAndPerturb, "generator_limit", 10)
    pair = nn.Parameter(torch.zeros(2, 4, 3))
    alone = nn.Parameter(torch.zeros(4, 3))

    def generators(*seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    batch = ShrinkAndPerturb([SeedView.whole(pair)], 0.1, counter_rng.seed_keys([3, 8]), generators(3, 8))
    single = ShrinkAndPerturb([SeedView.split(alone)], 0.1, counter_rng.seed_keys([8]), generators(8))
    assert batch.generators is not None
    batch.after_step([])
    single.after_step([])
    expected = torch.randn(4, 3, generator=torch.Generator().manual_seed(8)) * 0.1
    torch.testing.assert_close(alone.detach(), expected, rtol=0, atol=1e-7)
    assert torch.equal(pair[1], alone) and not torch.equal(pair[0], alone)
    saved, snapshot = single.state_dict(), alone.detach().clone()
    single.after_step([])
    after_two = alone.detach().clone()
    with torch.no_grad():
        alone.copy_(snapshot)
    resumed = ShrinkAndPerturb([SeedView.split(alone)], 0.1, counter_rng.seed_keys([8]), generators(99))
    resumed.load_state_dict(saved)
    resumed.after_step([])
    assert torch.equal(alone, after_two) and resumed.steps == 2
    with pytest.raises(ValueError, match="generator"):
        ShrinkAndPerturb([SeedView.whole(pair)], 0.1, counter_rng.seed_keys([3, 8]))
