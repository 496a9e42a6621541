"""Online normalisation against its definition computed by hand on a short stream; dropout and
online normalisation as MLP options (autograd path, CBP resets, resumable state)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lop_ray.algos import Backprop, CBPConfig, ContinualBackprop, make_optimizer
from lop_ray.algos.backprop import per_seed_cross_entropy
from lop_ray.algos.counter_rng import seed_keys
from lop_ray.nets import MLP
from lop_ray.nets.online_norm import OnlineNorm

ALPHA_F, ALPHA_B, EPS = 0.9, 0.8, 1e-5


def _by_definition(xs, upstream):
    """Chiley et al. Eq. 8, 11, 12 for one unit, in plain floats."""
    mean, var, error_y, error_1 = 0.0, 1.0, 0.0, 0.0
    outputs, grads = [], []
    for x, dy in zip(xs, upstream, strict=True):
        std = math.sqrt(var + EPS)
        y = (x - mean) / std
        var = ALPHA_F * var + ALPHA_F * (1 - ALPHA_F) * (x - mean) ** 2
        mean = ALPHA_F * mean + (1 - ALPHA_F) * x
        corrected = dy - (1 - ALPHA_B) * error_y * y
        dx = corrected / std - (1 - ALPHA_B) * error_1
        error_y += corrected * y
        error_1 += dx
        outputs.append(y)
        grads.append(dx)
    return outputs, grads, (mean, var, error_y, error_1)


def test_online_norm_matches_its_definition_on_a_stream():
    gen = torch.Generator().manual_seed(0)
    xs = (torch.randn(8, 3, generator=gen, dtype=torch.float64) * 2 + 1).tolist()
    upstream = torch.randn(8, 3, generator=gen, dtype=torch.float64).tolist()
    norm = OnlineNorm(3, forward_decay=ALPHA_F, backward_decay=ALPHA_B, eps=EPS).double()
    outputs, grads = [], []
    for x, dy in zip(xs, upstream, strict=True):
        xt = torch.tensor([[x]], dtype=torch.float64, requires_grad=True)  # (1 seed, 1 example, 3)
        y = norm(xt)
        y.backward(torch.tensor([[dy]], dtype=torch.float64))
        outputs.append(y.detach()[0, 0].tolist())
        grads.append(xt.grad[0, 0].tolist())
    for unit in range(3):
        expected_y, expected_dx, state = _by_definition([x[unit] for x in xs], [g[unit] for g in upstream])
        assert [o[unit] for o in outputs] == pytest.approx(expected_y, rel=1e-12, abs=1e-12)
        assert [g[unit] for g in grads] == pytest.approx(expected_dx, rel=1e-12, abs=1e-12)
        buffers = (norm.running_mean, norm.running_var, norm.error_y, norm.error_1)
        assert [float(b[0, unit]) for b in buffers] == pytest.approx(state, rel=1e-12, abs=1e-12)


def test_online_norm_of_a_seed_is_its_own_in_any_batch():
    """Two seeds' units normalised by one OnlineNorm: each seed's outputs, gradients and statistics
    are those of the seed alone."""
    gen = torch.Generator().manual_seed(5)
    xs = torch.randn(6, 2, 1, 3, generator=gen)
    upstream = torch.randn(6, 2, 1, 3, generator=gen)
    pair, alone = OnlineNorm(3, seeds=2), OnlineNorm(3)
    for x, dy in zip(xs, upstream, strict=True):
        both = x.clone().requires_grad_()
        one = x[1:].clone().requires_grad_()
        y_both, y_one = pair(both), alone(one)
        y_both.backward(dy)
        y_one.backward(dy[1:])
        assert torch.equal(y_both[1:], y_one) and torch.equal(both.grad[1:], one.grad)
    assert torch.equal(pair.running_var[1:], alone.running_var) and torch.equal(
        pair.error_1[1:], alone.error_1
    )


def test_eval_mode_normalises_without_changing_state_and_training_takes_one_example():
    norm = OnlineNorm(2)
    norm.running_mean.fill_(1.0)
    norm.running_var.fill_(4.0)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.eval()
    out = norm(torch.tensor([[[3.0, 1.0], [5.0, -1.0]]]))
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0], [2.0, -1.0]]]), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())
    norm.train()
    with pytest.raises(ValueError, match="one example per step"):
        norm(torch.zeros(1, 2, 2))


def _learner(net: MLP, cbp: bool):
    optimizer = make_optimizer(net.parameters(), "sgd", 0.05)
    gen = torch.Generator().manual_seed(1)
    interventions = []
    if cbp:
        config = CBPConfig(replacement_rate=0.5, maturity_threshold=1)
        interventions.append(ContinualBackprop(net.unit_groups(), optimizer, config, gen))
    return Backprop(net, optimizer, per_seed_cross_entropy, interventions)


def _stream(steps: int):
    gen = torch.Generator().manual_seed(2)
    return [
        (torch.randn(1, 1, 4, generator=gen), torch.randint(0, 3, (1, 1), generator=gen))
        for _ in range(steps)
    ]


@pytest.mark.parametrize("options", [{"dropout": 0.3}, {"online_norm": True}], ids=["dropout", "online_norm"])
def test_mlp_options_learn_with_autograd_and_resume_exactly(options):
    def build():
        keys = seed_keys([0])
        return MLP([4, 6, 6, 3], generators=[torch.Generator().manual_seed(0)], dropout_keys=keys, **options)

    net = build()
    assert net.loss_and_gradients(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long), None) is None
    learner = _learner(net, cbp=True)
    stream = _stream(12)
    expected = [learner.learn(x, y)[0].item() for x, y in stream]

    first = build()
    learner = _learner(first, cbp=True)
    got = [learner.learn(x, y)[0].item() for x, y in stream[:5]]
    saved = copy.deepcopy(learner.state_dict())  # the dropout step count is a buffer of the net
    resumed = build()
    learner = _learner(resumed, cbp=True)
    learner.load_state_dict(saved)
    got += [learner.learn(x, y)[0].item() for x, y in stream[5:]]
    assert got == expected


def test_cbp_resets_the_online_norm_entries_of_replaced_units():
    """Units 1 and 3 carry the smallest outgoing weights, so CBP (ρ = 0.5 of 4 units) replaces
    them: their statistics, error accumulators and affine entries restart, the others keep theirs."""
    net = MLP([4, 4, 3], generators=[torch.Generator().manual_seed(0)], online_norm=True)
    norm = net.norms[0]
    names = ("weight", "bias", "running_mean", "running_var", "error_y", "error_1")
    with torch.no_grad():
        for name in names:
            getattr(norm, name).fill_(7.0)
        net.layers[1].weight[:, :, [1, 3]] *= 1e-3
    [group] = net.unit_groups()
    assert [entry.view.tensor for entry in group.norm] == [getattr(norm, name) for name in names]
    optimizer = make_optimizer(net.parameters(), "sgd", 0.1)
    config = CBPConfig(replacement_rate=0.5, maturity_threshold=0, util_type="weight", accumulate=True)
    cbp = ContinualBackprop([group], optimizer, config, torch.Generator().manual_seed(1))
    cbp.after_step([torch.ones(1, 1, 4)])
    assert cbp.replaced_total.tolist() == [2]
    fresh = {
        "weight": 1.0,
        "bias": 0.0,
        "running_mean": 0.0,
        "running_var": 1.0,
        "error_y": 0.0,
        "error_1": 0.0,
    }
    for name in names:
        tensor = getattr(norm, name)
        assert tensor[0, [1, 3]].tolist() == [fresh[name]] * 2 and tensor[0, [0, 2]].tolist() == [7.0, 7.0], (
            name
        )


def test_dropout_is_off_in_eval_mode_and_scales_kept_units_in_training():
    net = MLP(
        [3, 1000, 2], generators=[torch.Generator().manual_seed(0)], dropout=0.25, dropout_keys=seed_keys([3])
    )
    x = torch.ones(1, 1, 3)
    net.eval()
    out_eval, [h_eval] = net(x)
    net.train()
    out_train, [h_train] = net(x)
    assert torch.equal(h_eval, h_train)  # CBP and the probes see the units' own activations
    assert not torch.equal(out_eval, out_train)


def test_dropout_masks_keep_one_minus_p_and_change_every_step():
    net = MLP(
        [3, 1000, 2], generators=[torch.Generator().manual_seed(0)], dropout=0.25, dropout_keys=seed_keys([3])
    )
    h = torch.ones(1, 1, 1000)
    masks = []
    for step in range(200):
        masks.append(net._kept(0, h, step))
    kept = torch.stack(masks).float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.005)  # 200,000 draws: a standard error of 0.001
    assert all(not torch.equal(a, b) for a, b in zip(masks, masks[1:], strict=False))
    assert torch.equal(net._kept(0, h, 7), masks[7])  # a function of (key, step) only
