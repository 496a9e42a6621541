"""Plasticity injection (Nikishin et al. 2023): an injection leaves every network's output as it
was, the new head is the constructor's draw, the frozen heads stay frozen while the encoder learns
through them, the optimizer state of the head restarts, PPO's runners act with the frozen heads, and
the sweep schema names bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lop_ray.algos.injection import InjectionConfig, PlasticityInjection
from lop_ray.algos.optim import make_optimizer
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp, learner_from_trial
from lop_ray.nets.conv_net import ConvNet, LinearNet
from lop_ray.nets.losses import per_seed_mse
from lop_ray.nets.policy import GaussianPolicy, ValueNetwork
from lop_ray.nets.resnet import CifarResNet18
from lop_ray.rl.acting import ActingPolicy
from lop_ray.rl.runner import policy_weights
from lop_ray.schema import SweepError, load_sweep
from tests.acting import assert_runners_act_as
from tests.method_sweeps import permuted_mnist_sweep


def _generators(seeds, stream=PlasticityInjection.stream):
    return [generator(s, LEARNER, stream) for s in seeds]


def _injection(net, optimizer, seeds, **options) -> PlasticityInjection:
    return PlasticityInjection(net, optimizer, InjectionConfig(**options), _generators(seeds))


def _networks():
    seeds = [2, 5]
    cpu = [torch.Generator().manual_seed(s) for s in seeds]
    return [
        ("mlp", initial_mlp([6, 5, 4, 3], "tanh", seeds), torch.randn(2, 7, 6)),
        ("conv_net", ConvNet(generators=cpu), torch.randn(2, 3, 3, 32, 32)),
        ("linear", LinearNet(generators=cpu), torch.randn(2, 3, 3, 32, 32)),
        ("resnet", CifarResNet18(num_classes=5, width=2, generators=cpu), torch.randn(2, 3, 3, 32, 32)),
        ("policy", GaussianPolicy(4, 2, hidden=(6, 5), generators=cpu), torch.randn(2, 9, 4)),
        ("value", ValueNetwork(4, hidden=(6, 5), generators=cpu), torch.randn(2, 9, 4)),
    ]


@pytest.mark.parametrize("index", range(6), ids=[name for name, _, _ in _networks()])
def test_an_injection_leaves_every_networks_output_and_draws_the_constructors_head(index):
    name, net, x = _networks()[index]
    net.eval()
    for layers in range(1, net.injectable_layers() + 1):
        optimizer = make_optimizer(net.parameters(), "adam", 1e-3)
        injection = _injection(net, optimizer, [2, 5], head_layers=layers)
        with torch.no_grad():
            before = net(x)[0]
            old_head = [layer.weight.of().clone() for layer in injection.head]
            injection.inject()
            after = net(x)[0]
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # the same function
        # the network's head is now a fresh draw of the constructor, each seed from its own stream
        fresh = _generators([2, 5])
        for seed, g in enumerate(fresh):
            for layer in injection.head:
                weight, bias = layer.draw(g)
                assert torch.equal(layer.weight.of()[seed], weight), (name, layers, layer.name)
        assert not any(
            torch.equal(a, layer.weight.of()) for a, layer in zip(old_head, injection.head, strict=True)
        )
        net.head_correction = None  # the next head size starts from this network as it now is
    with pytest.raises(ValueError, match="plain linear head"):
        _injection(
            net, make_optimizer(net.parameters(), "sgd", 0.1), [2, 5], head_layers=net.injectable_layers() + 1
        )


def test_the_encoder_learns_through_the_frozen_head_and_only_the_new_head_moves():
    """A 1 → 1 → 1 → 1 relu MLP, head = the output layer, worked by hand: after the injection
    y = (w3 − w3′₀ + w3′)·h2 + (b3 − b3′₀ + b3′), and one SGD step on (x, t) moves w3′ by
    −lr·2(y − t)·h2 and the encoder's w1 by −lr·2(y − t)·w3·w2·x (through the frozen w3: w3′ = w3′₀)."""
    net = initial_mlp([1, 1, 1, 1], "relu", [0])
    with torch.no_grad():
        for layer, (w, b) in zip(net.layers, [(0.5, 0.0), (2.0, 0.0), (3.0, 0.25)], strict=True):
            layer.weight.fill_(w)
            layer.bias.fill_(b)
    settings = LearnerSettings(
        algorithm="plasticity_injection",
        step_size=0.1,
        method=InjectionConfig(injection_period=1, max_injections=1),
    )
    learner, _ = build_learner(net, settings, [0], "cpu", per_seed_mse)
    x, t = torch.tensor([[[2.0]]]), torch.tensor([[[1.0]]])
    injection = learner.interventions[0]
    injection.inject()  # before any step: the head as set by hand is frozen
    ((delta_weight, delta_bias),) = injection.frozen.heads[0][0]
    w3_fresh, b3_fresh = net.layers[2].weight.item(), net.layers[2].bias.item()
    assert delta_weight.item() == pytest.approx(3.0 - w3_fresh) and delta_bias.item() == pytest.approx(
        0.25 - b3_fresh
    )
    h1, h2 = 0.5 * 2.0, 2.0 * 1.0
    y = 3.0 * h2 + 0.25
    loss, output = learner.learn(x, t)
    assert output.item() == pytest.approx(y) and loss.item() == pytest.approx((y - t.item()) ** 2)
    dy = 2 * (y - 1.0)
    assert net.layers[2].weight.item() == pytest.approx(w3_fresh - 0.1 * dy * h2, rel=1e-6)
    assert net.layers[2].bias.item() == pytest.approx(b3_fresh - 0.1 * dy, rel=1e-6)
    assert net.layers[1].weight.item() == pytest.approx(2.0 - 0.1 * dy * 3.0 * h1, rel=1e-6)
    assert net.layers[0].weight.item() == pytest.approx(0.5 - 0.1 * dy * 3.0 * 2.0 * 2.0, rel=1e-6)
    ((after_weight, _),) = injection.frozen.heads[0][0]
    assert torch.equal(after_weight, delta_weight)  # frozen
    # max_injections = 1: the periodic check at every step injects no more
    learner.learn(x, t)
    assert injection.injections == 1


def test_the_heads_optimizer_state_restarts_and_one_layer_heads_sum_into_one_map():
    net = initial_mlp([3, 4, 2], "relu", [1])
    optimizer = make_optimizer(net.parameters(), "adam", 1e-2)
    injection = _injection(net, optimizer, [1], injection_period=2)
    x = torch.randn(1, 5, 3)
    olds, fresh = [], []
    for _ in range(4):
        output, _ = net(x)
        grads = torch.autograd.grad(
            per_seed_mse(output, torch.ones_like(output)).sum(), list(net.parameters())
        )
        optimizer.apply_gradients(grads)
        if injection.steps % 2 == 1:
            olds.append(net.layers[1].weight.detach().clone())
        injection.after_step([])
        if injection.steps % 2 == 0:
            fresh.append(net.layers[1].weight.detach().clone())
            state = optimizer.state[net.layers[1].weight]
            assert all(not state[k].any() for k in ("exp_avg", "exp_avg_sq", "step"))
            assert optimizer.state[net.layers[0].weight]["exp_avg"].any()  # the encoder's is kept
    assert injection.injections == 2 and len(injection.frozen.heads) == 1
    ((summed, _),) = injection.frozen.heads[0][0]
    torch.testing.assert_close(summed, (olds[0] - fresh[0]) + (olds[1] - fresh[1]))


def test_a_deeper_head_keeps_each_injections_pair_and_resumes_exactly():
    def learner():
        net = initial_mlp([3, 6, 5, 2], "relu", [0, 1])
        settings = LearnerSettings(
            algorithm="plasticity_injection",
            optimizer="adam",
            step_size=1e-2,
            method=InjectionConfig(injection_period=3, head_layers=2),
        )
        return build_learner(net, settings, [0, 1], "cpu", per_seed_mse)[0]

    x, y = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(2, 4, 2)
    straight = learner()
    expected = [straight.learn(x, y)[0].tolist() for _ in range(10)]
    assert len(straight.interventions[0].frozen.heads) == 3
    first = learner()
    for _ in range(5):
        first.learn(x, y)
    state = first.state_dict()
    resumed = learner()
    resumed.load_state_dict(state)
    assert [resumed.learn(x, y)[0].tolist() for _ in range(5)] == expected[5:]
    other = PlasticityInjection(
        resumed.net, resumed.optimizer, InjectionConfig(head_layers=1), _generators([0, 1])
    )
    with pytest.raises(ValueError, match="injection config"):
        other.load_state_dict(state["interventions"][0])


def test_the_runners_act_with_the_frozen_heads():
    policy = GaussianPolicy(
        5, 2, hidden=(7, 6), generators=[torch.Generator().manual_seed(s) for s in (0, 1)]
    )
    optimizer = make_optimizer(policy.parameters(), "adam", 1e-3)
    injection = _injection(policy, optimizer, [0, 1], head_layers=2)
    obs = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    rows = [0, 1, 1, 0]
    for _ in range(2):
        injection.inject()
        with torch.no_grad():  # move the new head off its initial copy, so that the terms matter
            for layer in injection.head:
                layer.weight.of().add_(0.1)
        expected = assert_runners_act_as(policy, obs, rows)
    plain = ActingPolicy()
    plain.load({k: v for k, v in policy_weights(policy).items() if not k.startswith("frozen")}, rows=rows)
    assert not np.allclose(plain.mean(obs), expected, atol=1e-3)  # the frozen heads are part of it


def _sweep(tmp_path, entry: dict, network: dict | None = None) -> str:
    return permuted_mnist_sweep(tmp_path, "injection", entry, network)


def test_the_sweep_schema_offers_injection_and_names_bad_values(tmp_path):
    entry = {
        "algorithm": "plasticity_injection",
        "step_size": 0.01,
        "injection_period": 500,
        "head_layers": 3,
    }
    settings = learner_from_trial(load_sweep(_sweep(tmp_path, entry)).trials[0])
    assert settings.method == InjectionConfig(injection_period=500, head_layers=3, max_injections=0)
    for bad, network, message in (
        ({"head_layers": 4}, None, "head_layers = 4, but this network's plain linear head has 3 layer"),
        ({"head_layers": 2}, {"hidden_units": 10, "hidden_layers": 2, "layer_norm": True}, "has 1 layer"),
        ({"head_layers": 0}, None, "greater than or equal to 1"),
        ({"injection_period": 0}, None, "greater than or equal to 1"),
        ({"max_injections": -1}, None, "greater than or equal to 0"),
    ):
        with pytest.raises(SweepError, match=message) as error:
            load_sweep(_sweep(tmp_path, {**entry, **bad}, network))
        assert "injection.yaml" in str(error.value)
