"""The MLP's hand-written backward pass equals autograd, for every activation and both losses, for
one seed and for several, and a learner using it follows the autograd learner's trajectory."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lop_ray.algos import Backprop, CBPConfig, ContinualBackprop, make_optimizer
from lop_ray.nets import ACTIVATIONS, MLP
from lop_ray.nets.losses import per_seed_cross_entropy, per_seed_mse


def _target(loss_fn, seeds: int, batch: int) -> torch.Tensor:
    if loss_fn is per_seed_mse:
        return torch.randn(seeds, batch, 3, dtype=torch.float64)
    return torch.randint(0, 3, (seeds, batch))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("loss_fn", [per_seed_mse, per_seed_cross_entropy], ids=["mse", "cross_entropy"])
@pytest.mark.parametrize(("seeds", "batch"), [(1, 1), (1, 7), (3, 1), (2, 7)])
def test_hand_gradients_equal_autograd(activation, loss_fn, seeds, batch):
    torch.manual_seed(0)
    net = MLP([4, 6, 5, 3], activation, [None] * seeds).double()
    x = torch.randn(seeds, batch, 4, dtype=torch.float64)
    y = _target(loss_fn, seeds, batch)
    output, activations = net(x)
    loss = loss_fn(output, y)
    expected = torch.autograd.grad(loss.sum(), list(net.parameters()))

    got_loss, got_output, got_activations, got = net.loss_and_gradients(x, y, loss_fn)

    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_output, output.detach(), rtol=0, atol=0)
    for a, b in zip(got_activations, activations, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        # autograd's leaky_relu kernel rounds its slope 0.01 through float32 (relative 2e-8)
        # (relative 2e-8 of each negative-side product: 2e-10 absolute on gradients of order 0.01)
        rtol, atol = (1e-7, 1e-9) if activation == "leaky_relu" else (1e-9, 1e-12)
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)


def test_unsupported_loss_falls_back_to_autograd():
    net = MLP([3, 4, 2])
    assert net.loss_and_gradients(torch.randn(1, 2, 3), torch.randn(1, 2, 2), F.l1_loss) is None
    learner = Backprop(net, make_optimizer(net.parameters(), "sgd", 0.1), F.l1_loss)
    before = [p.clone() for p in net.parameters()]
    learner.learn(torch.randn(1, 2, 3), torch.randn(1, 2, 2))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_learner_with_hand_gradients_tracks_autograd_learner():
    """Same CBP learner twice, one forced onto autograd (optimizer over a reordered list disables the
    hand path): 300 float64 steps agree to rounding."""

    def build(hand: bool):
        torch.manual_seed(1)
        net = MLP([5, 8, 1], "tanh").double()
        params = list(net.parameters())
        if not hand:  # same parameters, another order: Backprop must use autograd
            params = params[2:] + params[:2]
        optimizer = make_optimizer(params, "adam", 1e-2)
        gen = torch.Generator().manual_seed(3)
        cbp = ContinualBackprop(
            net.unit_groups(), optimizer, CBPConfig(replacement_rate=0.05, maturity_threshold=5), gen
        )
        learner = Backprop(net, optimizer, per_seed_mse, [cbp])
        assert (learner._hand_gradients is not None) == hand
        return net, learner

    (net_a, hand), (net_b, auto) = build(True), build(False)
    data = torch.Generator().manual_seed(4)
    for _ in range(300):
        x = torch.randn(1, 1, 5, generator=data, dtype=torch.float64)
        y = torch.randn(1, 1, 1, generator=data, dtype=torch.float64)
        loss_a, _ = hand.learn(x, y)
        loss_b, _ = auto.learn(x, y)
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-9, atol=1e-12)
    for a, b in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
