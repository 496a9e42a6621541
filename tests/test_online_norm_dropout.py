"""Online normalisation against its definition computed by hand on a short stream; dropout and
online normalisation as MLP options (autograd path, CBP resets, resumable state)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lop_ray.algos import Backprop, CBPConfig, ContinualBackprop, make_optimizer
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
        xt = torch.tensor([x], dtype=torch.float64, requires_grad=True)
        y = norm(xt)
        y.backward(torch.tensor([dy], dtype=torch.float64))
        outputs.append(y.detach()[0].tolist())
        grads.append(xt.grad[0].tolist())
    for unit in range(3):
        expected_y, expected_dx, state = _by_definition([x[unit] for x in xs], [g[unit] for g in upstream])
        assert [o[unit] for o in outputs] == pytest.approx(expected_y, rel=1e-12, abs=1e-12)
        assert [g[unit] for g in grads] == pytest.approx(expected_dx, rel=1e-12, abs=1e-12)
        buffers = (norm.running_mean, norm.running_var, norm.error_y, norm.error_1)
        assert [float(b[unit]) for b in buffers] == pytest.approx(state, rel=1e-12, abs=1e-12)


def test_eval_mode_normalises_without_changing_state_and_training_takes_one_example():
    norm = OnlineNorm(2)
    norm.running_mean.fill_(1.0)
    norm.running_var.fill_(4.0)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.eval()
    out = norm(torch.tensor([[3.0, 1.0], [5.0, -1.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [2.0, -1.0]]), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())
    norm.train()
    with pytest.raises(ValueError, match="one example per step"):
        norm(torch.zeros(2, 2))


def _learner(net: MLP, cbp: bool):
    optimizer = make_optimizer(net.parameters(), "sgd", 0.05)
    gen = torch.Generator().manual_seed(1)
    net.noise_generator = gen
    interventions = []
    if cbp:
        config = CBPConfig(replacement_rate=0.5, maturity_threshold=1)
        interventions.append(ContinualBackprop(net.unit_groups(), optimizer, config, gen))
    return Backprop(net, optimizer, torch.nn.functional.cross_entropy, interventions)


def _stream(steps: int):
    gen = torch.Generator().manual_seed(2)
    return [
        (torch.randn(1, 4, generator=gen), torch.randint(0, 3, (1,), generator=gen)) for _ in range(steps)
    ]


@pytest.mark.parametrize("options", [{"dropout": 0.3}, {"online_norm": True}], ids=["dropout", "online_norm"])
def test_mlp_options_learn_with_autograd_and_resume_exactly(options):
    def build():
        return MLP([4, 6, 6, 3], generator=torch.Generator().manual_seed(0), **options)

    net = build()
    assert net.loss_and_gradients(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), None) is None
    learner = _learner(net, cbp=True)
    stream = _stream(12)
    expected = [learner.learn(x, y)[0].item() for x, y in stream]

    first = build()
    learner = _learner(first, cbp=True)
    got = [learner.learn(x, y)[0].item() for x, y in stream[:5]]
    saved = copy.deepcopy({"learner": learner.state_dict(), "noise": first.noise_generator.get_state()})
    resumed = build()
    learner = _learner(resumed, cbp=True)
    learner.load_state_dict(saved["learner"])
    resumed.noise_generator.set_state(saved["noise"])
    got += [learner.learn(x, y)[0].item() for x, y in stream[5:]]
    assert got == expected


def test_cbp_resets_the_online_norm_entries_of_replaced_units():
    net = MLP([4, 6, 3], generator=torch.Generator().manual_seed(0), online_norm=True)
    norm = net.norms[0]
    with torch.no_grad():
        for tensor in (
            norm.weight,
            norm.bias,
            norm.running_mean,
            norm.running_var,
            norm.error_y,
            norm.error_1,
        ):
            tensor.fill_(7.0)
    [group] = net.unit_groups()
    assert group.norm is norm
    from lop_ray.algos.cbp import _reset_norm_entries

    _reset_norm_entries(group.norm, torch.tensor([1, 4]))
    for tensor, fresh in (
        (norm.weight, 1.0),
        (norm.bias, 0.0),
        (norm.running_mean, 0.0),
        (norm.running_var, 1.0),
    ):
        assert tensor[[1, 4]].tolist() == [fresh, fresh] and tensor[0].item() == 7.0
    assert norm.error_y[[1, 4]].tolist() == [0.0, 0.0] and norm.error_1[[1, 4]].tolist() == [0.0, 0.0]


def test_dropout_is_off_in_eval_mode_and_scales_kept_units_in_training():
    net = MLP([3, 1000, 2], generator=torch.Generator().manual_seed(0), dropout=0.25)
    net.noise_generator = torch.Generator().manual_seed(3)
    x = torch.ones(1, 3)
    net.eval()
    out_eval, [h_eval] = net(x)
    net.train()
    out_train, [h_train] = net(x)
    assert torch.equal(h_eval, h_train)  # CBP and the probes see the units' own activations
    assert not torch.equal(out_eval, out_train)
