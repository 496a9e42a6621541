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


def _assert_hand_pass_equals_autograd(
    auto: MLP, hand: MLP, x, y, loss_fn
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One training pass of `auto` through `forward` + autograd and of `hand` (same parameters and
    state) through `loss_and_gradients`: the same outputs and activations exactly, the same gradients
    to float64 rounding. Returns the output and autograd's gradients."""
    output, activations = auto(x)
    expected = torch.autograd.grad(loss_fn(output, y).sum(), list(auto.parameters()))
    _, got_output, got_activations, got = hand.loss_and_gradients(x, y, loss_fn)
    torch.testing.assert_close(got_output, output.detach(), rtol=0, atol=0)
    for a, b in zip(got_activations, activations, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    return got_output, expected


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("loss_fn", [per_seed_mse, per_seed_cross_entropy], ids=["mse", "cross_entropy"])
@pytest.mark.parametrize(("seeds", "batch", "width"), [(1, 1, 6), (2, 7, 6), (2, 1, 80)])
def test_hand_gradients_with_dropout_equal_autograd(activation, loss_fn, seeds, batch, width):
    """Dropout's hand-written backward pass uses the forward's masks: two nets from the same draws at
    the same step count, one through `forward` + autograd, one through `loss_and_gradients`; the same
    masks (the outputs are equal), the same gradients, and both advance the mask counter once.
    Width 80 puts the layers above the small-layer size, on the batched-product path."""
    from lop_ray.algos.counter_rng import seed_keys

    def build() -> MLP:
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        net = MLP([4, width, width, 3], activation, gens, dropout=0.3, dropout_keys=seed_keys(range(seeds)))
        net.dropout_steps.fill_(5)
        return net.double()

    auto, hand = build(), build()
    x = torch.randn(seeds, batch, 4, dtype=torch.float64)
    y = _target(loss_fn, seeds, batch)
    output, _ = _assert_hand_pass_equals_autograd(auto, hand, x, y, loss_fn)
    assert int(hand.dropout_steps) == int(auto.dropout_steps) == 6
    hand.eval()
    assert not torch.equal(hand(x)[0], output)  # some unit was dropped: the masks were applied


def test_dropout_learner_uses_the_hand_backward_pass_and_its_fused_sgd_step():
    """The permuted-MNIST dropout learner (stateless SGD) takes the fused step, not autograd."""
    from lop_ray.algos.counter_rng import seed_keys

    net = MLP(
        [784, 2000, 10], "relu", [torch.Generator().manual_seed(0)], dropout=0.1, dropout_keys=seed_keys([0])
    )
    learner = Backprop(net, make_optimizer(net.parameters(), "sgd", 0.01), per_seed_cross_entropy)
    assert learner._hand_gradients is not None and learner._fused_sgd is not None
    x, y = torch.rand(1, 1, 784), torch.tensor([[3]])
    assert net.fused_sgd_step(x, y, per_seed_cross_entropy, 0.01, 0.0) is not None


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize(("seeds", "width"), [(1, 6), (2, 80)])
def test_hand_gradients_with_online_norm_equal_autograd_over_steps(activation, seeds, width):
    """Online normalisation's hand-written backward pass (its corrected gradient, Eq. 11–12) against
    its autograd Function: 5 one-example steps of two nets from the same draws, the same gradients
    every step and the same statistics and error accumulators after each (their state evolves with
    the steps, so a wrong accumulator update shows in the later steps' gradients)."""

    def build() -> MLP:
        gens = [torch.Generator().manual_seed(s) for s in range(seeds)]
        return MLP([4, width, width, 3], activation, gens, online_norm=True).double()

    auto, hand = build(), build()
    data = torch.Generator().manual_seed(7)
    for _ in range(5):
        x = torch.randn(seeds, 1, 4, generator=data, dtype=torch.float64)
        y = torch.randint(0, 3, (seeds, 1), generator=data)
        _, expected = _assert_hand_pass_equals_autograd(auto, hand, x, y, per_seed_cross_entropy)
        for name, buffer in auto.named_buffers():
            torch.testing.assert_close(dict(hand.named_buffers())[name], buffer, rtol=1e-12, atol=1e-14)
        # move both nets by the same gradients so the next step's statistics differ from this one's
        with torch.no_grad():
            for a, h, e in zip(auto.parameters(), hand.parameters(), expected, strict=True):
                a.sub_(0.1 * e)
                h.sub_(0.1 * e)
    assert any(float(b.abs().sum()) for n, b in hand.named_buffers() if n.endswith("error_y"))


def test_online_norm_learner_takes_the_fused_sgd_step_and_tracks_autograd():
    """Permuted MNIST's online-norm learner (stateless SGD, L2) through the fused step against the
    same learner through autograd (80-wide layers: above the small-layer size, so the fused path
    runs): 20 steps, parameters and statistics agree to float64 rounding."""

    def build(hand: bool):
        net = MLP([10, 80, 80, 3], "relu", [torch.Generator().manual_seed(0)], online_norm=True).double()
        params = list(net.parameters())
        if not hand:  # another order: Backprop falls back to autograd
            params = params[::-1]
        learner = Backprop(
            net, make_optimizer(params, "sgd", 0.05, weight_decay=1e-3), per_seed_cross_entropy
        )
        assert (learner._fused_sgd is not None) == hand
        return net, learner

    (hand_net, hand), (auto_net, auto) = build(True), build(False)
    data = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(1, 1, 10, generator=data, dtype=torch.float64)
        y = torch.randint(0, 3, (1, 1), generator=data)
        torch.testing.assert_close(hand.learn(x, y)[0], auto.learn(x, y)[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(hand_net.state_dict().values(), auto_net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
