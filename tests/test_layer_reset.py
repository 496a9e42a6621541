"""Layer and full resets (Nikishin et al. 2022): the chosen layers are redrawn from their initial
distribution at the period, nothing else moves, each seed draws alone, and resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch

from lop_ray.algos.layer_reset import LayerReset, LayerResetConfig
from lop_ray.algos.optim import make_optimizer
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.experiments.learner import LearnerSettings, build_learner, initial_mlp, learner_from_trial
from lop_ray.nets.conv_net import ConvNet, LinearNet
from lop_ray.nets.losses import per_seed_mse
from lop_ray.nets.mlp import MLP
from lop_ray.nets.resnet import CifarResNet18
from lop_ray.schema import SweepError, load_sweep
from tests.method_sweeps import permuted_mnist_sweep


def _constructor_draws_again(net, generators) -> None:
    """Drawing every weight layer in order from fresh generators of the same seeds gives exactly the
    network's initial parameters: the layers' draws are the constructor's."""
    layers = net.weight_layers()
    for seed, g in enumerate(generators):
        for layer in layers:
            weight, bias = layer.draw(g)
            assert torch.equal(layer.weight.of()[seed], weight), (layer.name, seed)
            if layer.bias is not None:
                assert torch.equal(layer.bias.of()[seed], bias), (layer.name, seed)


def test_every_network_lists_its_layers_with_the_constructors_draws():
    seeds = [4, 9]
    _constructor_draws_again(
        initial_mlp([6, 5, 4, 3], "tanh", seeds), [generator(s, LEARNER, 0) for s in seeds]
    )
    for cls in (ConvNet, LinearNet):
        net = cls(generators=[torch.Generator().manual_seed(s) for s in seeds])
        _constructor_draws_again(net, [torch.Generator().manual_seed(s) for s in seeds])
    resnet = CifarResNet18(
        num_classes=5, width=2, generators=[torch.Generator().manual_seed(s) for s in seeds]
    )
    names = [layer.name for layer in resnet.weight_layers()]
    assert len(names) == 1 + 16 + 3 + 1 and names[-1] == "output"  # stem, block convs, downsamples, fc
    _constructor_draws_again(resnet, [torch.Generator().manual_seed(s) for s in seeds])


def _momentum_learner(net: MLP, config: LayerResetConfig, seeds: list[int]):
    optimizer = make_optimizer(net.parameters(), "sgd", 0.1, momentum=0.9)
    reset = LayerReset(net.weight_layers(), optimizer, config, [generator(s, LEARNER, 4000) for s in seeds])
    return optimizer, reset


def _sgd_step(net: MLP, optimizer) -> None:
    x = torch.randn(
        net.num_seeds, 3, net.layers[0].weight.shape[2], generator=torch.Generator().manual_seed(1)
    )
    output, _ = net(x)
    loss = per_seed_mse(output, torch.zeros_like(output)).sum()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    optimizer.apply_gradients(grads)


def test_the_last_layer_is_redrawn_at_the_period_and_nothing_else_moves():
    seeds = [0, 3]
    net = initial_mlp([4, 6, 2], "relu", seeds)
    optimizer, reset = _momentum_learner(net, LayerResetConfig(reset_period=2, layers=1), seeds)
    _sgd_step(net, optimizer)
    reset.after_step([])
    assert reset.resets == 0
    _sgd_step(net, optimizer)
    hidden_before = [p.detach().clone() for p in net.layers[0].parameters()]
    hidden_momentum = optimizer.state[net.layers[0].weight]["momentum_buffer"].clone()
    reset.after_step([])
    assert reset.resets == 1 and reset.replaced_total.tolist() == [2, 2]  # the two output units
    for seed_index, seed in enumerate(seeds):
        # the output layer's construction draw: Kaiming-uniform, linear gain, bound √(3/6)
        expected = torch.empty(2, 6).uniform_(-(0.5**0.5), 0.5**0.5, generator=generator(seed, LEARNER, 4000))
        assert torch.equal(net.layers[1].weight[seed_index].detach(), expected)
    assert torch.equal(net.layers[1].bias.detach(), torch.zeros(2, 2))
    assert torch.equal(optimizer.state[net.layers[1].weight]["momentum_buffer"], torch.zeros(2, 2, 6))
    assert torch.equal(optimizer.state[net.layers[1].bias]["momentum_buffer"], torch.zeros(2, 2))
    for got, want in zip(net.layers[0].parameters(), hidden_before, strict=True):
        assert torch.equal(got.detach(), want)
    assert torch.equal(optimizer.state[net.layers[0].weight]["momentum_buffer"], hidden_momentum)


def test_a_full_reset_redraws_every_layer_and_can_keep_the_optimizer_state():
    seeds = [1]
    net = initial_mlp([4, 6, 6, 2], "tanh", seeds)
    config = LayerResetConfig(reset_period=1, layers=0, reset_optimizer_state=False)
    optimizer, reset = _momentum_learner(net, config, seeds)
    _sgd_step(net, optimizer)
    momenta = [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    reset.after_step([])
    initial = initial_mlp([4, 6, 6, 2], "tanh", seeds)  # the trial's first values
    for layer, first in zip(net.layers, initial.layers, strict=True):
        assert not torch.equal(layer.weight, first.weight)  # a new draw, not the first values
    _constructor_draws_again(net, [generator(1, LEARNER, 4000)])
    for param, momentum in zip(net.parameters(), momenta, strict=True):
        assert torch.equal(optimizer.state[param]["momentum_buffer"], momentum)


def test_a_norm_layer_on_a_reset_layer_restarts():
    seeds = [2]
    net = MLP([4, 5, 2], "relu", [generator(2, LEARNER, 0)], online_norm=True)
    norm = net.norms[0]
    with torch.no_grad():
        for name in norm.unit_entries():
            getattr(norm, name).add_(0.25)
    optimizer, reset = _momentum_learner(net, LayerResetConfig(reset_period=1, layers=0), seeds)
    reset.after_step([])
    for name, fresh in norm.unit_entries().items():
        assert torch.all(getattr(norm, name) == fresh), name


def test_each_seed_of_a_batch_resets_as_it_does_alone_and_resume_is_exact():
    settings = LearnerSettings(
        algorithm="layer_reset",
        step_size=0.05,
        momentum=0.9,
        method=LayerResetConfig(reset_period=3, layers=2),
    )

    def run(seeds: list[int], steps: int, learner=None):
        if learner is None:
            net = initial_mlp([5, 7, 7, 1], "relu", seeds)
            learner, replacer = build_learner(net, settings, seeds, "cpu", per_seed_mse)
        losses = []
        for _ in range(steps):
            data = [torch.Generator().manual_seed(1000 * s + learner.interventions[0].steps) for s in seeds]
            x = torch.stack([torch.randn(4, 5, generator=g) for g in data])
            y = torch.stack([torch.randn(4, 1, generator=g) for g in data])
            losses.append(learner.learn(x, y)[0])
        return learner, torch.stack(losses)

    batch, together = run([3, 8], 7)
    assert batch.interventions[0].resets == 2
    for position, seed in enumerate([3, 8]):
        _, alone = run([seed], 7)
        assert torch.equal(alone[:, 0], together[:, position])
    first, _ = run([3, 8], 4)
    saved = copy.deepcopy(first.state_dict())
    net = initial_mlp([5, 7, 7, 1], "relu", [3, 8])
    resumed, _ = build_learner(net, settings, [3, 8], "cpu", per_seed_mse)
    resumed.load_state_dict(saved)
    _, rest = run([3, 8], 3, resumed)
    assert torch.equal(rest, together[4:])


def test_a_checkpoint_of_another_configuration_is_refused():
    net = initial_mlp([4, 6, 2], "relu", [0])
    _, reset = _momentum_learner(net, LayerResetConfig(reset_period=2, layers=1), [0])
    _, other = _momentum_learner(net, LayerResetConfig(reset_period=3, layers=1), [0])
    with pytest.raises(ValueError, match="layer-reset config"):
        other.load_state_dict(reset.state_dict())
    with pytest.raises(ValueError, match="weight layers"):
        _momentum_learner(net, LayerResetConfig(layers=3), [0])
    with pytest.raises(ValueError, match="reset_period must be >= 1"):
        LayerResetConfig(reset_period=0)


def _sweep(tmp_path, entry: dict) -> str:
    return permuted_mnist_sweep(tmp_path, "resets", entry)


def test_the_sweep_schema_offers_layer_resets_and_names_bad_values(tmp_path):
    entry = {"algorithm": "layer_reset", "step_size": 0.01, "reset_period": 500, "layers": 0}
    sweep = load_sweep(_sweep(tmp_path, entry))
    settings = learner_from_trial(sweep.trials[0])
    assert settings.method == LayerResetConfig(reset_period=500, layers=0, reset_optimizer_state=True)
    assert sweep.trials[0]["seeds_per_trial"] == 2
    for bad, message in (
        ({"layers": 4}, "layers = 4, but the network has 3 weight layers"),
        ({"layers": -1}, "greater than or equal to 0"),
        ({"reset_period": 0}, "greater than or equal to 1"),
        ({"reset_optimizer_state": "sometimes"}, "reset_optimizer_state"),
    ):
        with pytest.raises(SweepError, match=message) as error:
            load_sweep(_sweep(tmp_path, {**entry, **bad}))
        assert "resets.yaml" in str(error.value)
