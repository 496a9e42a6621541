"""Parseval regularisation (Chung et al. 2024): the gradient term 4λ(WWᵀ − sI)W on every hidden
weight layer, pinned by hand and against autograd of the penalty, through a real learner step, per
seed, and in the sweep schema."""

from __future__ import annotations

import pytest
import torch

from lop_ray.algos.backprop import Backprop
from lop_ray.algos.optim import make_optimizer
from lop_ray.algos.parseval import ParsevalConfig, ParsevalRegularisation
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp, learner_from_trial
from lop_ray.nets.conv_net import ConvNet
from lop_ray.nets.losses import per_seed_mse
from lop_ray.schema import SweepError
from tests.method_sweeps import regression_sweep


def test_the_term_of_a_hand_made_layer():
    net = initial_mlp([2, 2, 1], "relu", [0])
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]))
    parseval = ParsevalRegularisation(net.weight_layers(), ParsevalConfig(parseval_strength=0.5))
    params = list(net.parameters())
    grads = [None] * len(params)
    parseval.add_gradient(params, grads)
    # WWᵀ − I = diag(3, 0); 4·0.5·diag(3, 0)·W = [[12, 0], [0, 0]]
    hidden = next(i for i, p in enumerate(params) if p is net.layers[0].weight)
    assert grads[hidden].tolist() == [[[12.0, 0.0], [0.0, 0.0]]]
    assert all(g is None for i, g in enumerate(grads) if i != hidden)  # output layer and biases free
    assert parseval.penalty().tolist() == [9.0]


def test_the_term_is_the_penalty_gradient_for_every_seed_and_conv_kernel():
    seeds = 2
    net = ConvNet(2, generators=[torch.Generator().manual_seed(s) for s in range(seeds)])
    config = ParsevalConfig(parseval_strength=0.3, parseval_scale=0.7)
    parseval = ParsevalRegularisation(net.weight_layers(), config)
    params = list(net.parameters())
    grads = [torch.zeros_like(p) for p in params]
    parseval.add_gradient(params, grads)
    penalty = torch.zeros(())
    for layer in net.weight_layers()[:-1]:  # the penalty in autograd, seed by seed, kernels (out, in·k·k)
        for s in range(seeds):
            weight = layer.weight.tensor.view(layer.weight.shape)[s].reshape(layer.weight.shape[1], -1)
            eye = torch.eye(weight.shape[0])
            penalty = (
                penalty
                + config.parseval_strength * (weight @ weight.T - config.parseval_scale * eye).pow(2).sum()
            )
    expected = torch.autograd.grad(penalty, params, allow_unused=True)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, torch.zeros_like(got) if want is None else want, rtol=1e-4, atol=1e-5)
    output = next(i for i, p in enumerate(params) if p is net.weight_layers()[-1].weight.tensor)
    assert not grads[output].any()


def test_a_learner_step_adds_the_term_to_the_loss_gradient_unfused():
    seeds = [3, 5]
    net = initial_mlp([4, 6, 1], "tanh", seeds)
    reference = initial_mlp([4, 6, 1], "tanh", seeds)
    config = ParsevalConfig(parseval_strength=0.05)
    learner = Backprop(
        net,
        make_optimizer(net.parameters(), "sgd", 0.1),
        per_seed_mse,
        [ParsevalRegularisation(net.weight_layers(), config)],
    )
    assert learner._fused_sgd is None  # plain SGD would fuse its update into the backward pass
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2, 3, 1, generator=torch.Generator().manual_seed(1))
    learner.learn(x, y)
    loss = per_seed_mse(reference(x)[0], y).sum()
    w = reference.layers[0].weight
    penalty = config.parseval_strength * (w @ w.transpose(1, 2) - torch.eye(6)).pow(2).sum()
    grads = torch.autograd.grad(loss + penalty, list(reference.parameters()))
    with torch.no_grad():
        for param, grad in zip(reference.parameters(), grads, strict=True):
            param -= 0.1 * grad
    for got, want in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_repeated_steps_on_the_penalty_alone_make_the_rows_orthonormal():
    net = initial_mlp([8, 5, 1], "relu", [0, 1])
    parseval = ParsevalRegularisation(net.weight_layers(), ParsevalConfig(parseval_strength=0.05))
    params = list(net.parameters())
    start = parseval.penalty()
    for _ in range(300):
        grads = [None] * len(params)
        parseval.add_gradient(params, grads)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                if grad is not None:
                    param -= 0.1 * grad
    assert (parseval.penalty() < 1e-6 * start).all()
    w = net.layers[0].weight
    torch.testing.assert_close(w @ w.transpose(1, 2), torch.eye(5).expand(2, 5, 5), atol=1e-3, rtol=0)


def test_build_learner_attaches_it_and_the_checkpoint_names_its_config():
    net = initial_mlp([3, 4, 2], "relu", [0])
    settings = LearnerSettings(algorithm="parseval", method=ParsevalConfig(parseval_strength=0.2))
    learner, replacer = build_learner(net, settings, [0], "cpu", per_seed_mse)
    assert replacer is None and isinstance(learner.interventions[0], ParsevalRegularisation)
    other = ParsevalRegularisation(net.weight_layers(), ParsevalConfig(parseval_strength=0.3))
    with pytest.raises(ValueError, match="checkpoint is of Parseval"):
        other.load_state_dict(learner.interventions[0].state_dict())
    with pytest.raises(ValueError, match="parseval_strength must be > 0"):
        ParsevalConfig(parseval_strength=0.0)
    with pytest.raises(ValueError, match="at least one hidden layer"):
        ParsevalRegularisation(initial_mlp([3, 1], "relu", [0]).weight_layers(), ParsevalConfig())


def test_the_sweep_schema_takes_its_options_and_refuses_bad_ones(tmp_path):
    (trial,) = regression_sweep(tmp_path, "parseval", 5, parseval_strength=0.01, parseval_scale=2.0).trials
    assert learner_from_trial(trial).method == ParsevalConfig(parseval_strength=0.01, parseval_scale=2.0)
    with pytest.raises(SweepError) as error:
        regression_sweep(tmp_path, "parseval", 5, parseval_strength=-1.0)
    assert "algorithms[0].parseval_strength" in str(error.value)
    with pytest.raises(SweepError) as error:
        regression_sweep(tmp_path, "parseval", 0)
    assert "algorithms[0].algorithm" in str(error.value) and "hidden layer" in str(error.value)
