"""CReLU (Abbas et al. 2023) and layer normalisation (Lyle et al. 2024) beyond the MLP: the conv
net's channels and fully connected units, and PPO's policy and value nets. Shapes and columns by
hand, the norm against PyTorch's GroupNorm and LayerNorm, resets of a unit's columns and norm
entries, a seed alone as in a batch, the runners' numpy copy, and the schema."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from lop_ray.algos import CBPConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.experiments.learner import LearnerSettings, build_learner
from lop_ray.nets.activations import crelu
from lop_ray.nets.conv_net import ConvNet
from lop_ray.nets.layer_norm import SeedChannelNorm
from lop_ray.nets.losses import per_seed_cross_entropy, per_seed_mse
from lop_ray.nets.policy import GaussianPolicy, ValueNetwork
from lop_ray.schema import SweepError, load_sweep
from tests.acting import assert_runners_act_as


def _conv_net(seeds=(0, 1), **options) -> ConvNet:
    return ConvNet(generators=[torch.Generator().manual_seed(s) for s in seeds], **options)


def test_crelu_interleaves_along_the_channels_and_the_conv_net_widens_every_next_layer():
    z = torch.tensor([[[[1.0]], [[-2.0]]]])  # (batch 1, 2 channels, 1, 1)
    assert crelu(z, dim=1).flatten().tolist() == [1.0, 0.0, 0.0, 2.0]
    net = _conv_net(crelu=True)
    assert [conv.weight.shape[1] for conv in net.convs] == [3, 64, 128]
    assert [fc.weight.shape[2] for fc in (net.fc1, net.fc2, net.fc3)] == [256 * 4, 256, 256]
    output, features = net(torch.randn(2, 3, 3, 32, 32))
    assert output.shape == (2, 3, 2) and [f.shape[2] for f in features] == [64, 128, 256, 256, 256]
    groups = net.unit_groups()
    assert [g.width for g in groups] == [32, 64, 128, 128, 128]
    assert [g.fan_out_per_unit for g in groups] == [2, 2, 8, 2, 2]
    conv2 = net.conv2.weight.view(2, 64, 64, 3, 3)
    # channel 5 of conv1 (seed 1) feeds conv2's input channels 10 and 11; conv3's channel 7, fc1's
    # columns 56 … 63 (two outputs × 2·2 positions, channel-major)
    assert torch.equal(groups[0].outgoing_by_unit()[1, :, 5], conv2[1, :, 10:12].flatten(1))
    assert torch.equal(groups[2].outgoing_by_unit()[0, :, 7], net.fc1.weight[0, :, 56:64])
    for group, feature in zip(groups, features, strict=True):
        assert group.seed_activations(feature).shape[:4] == (2, 3, group.width, 2)


def test_the_conv_nets_norm_is_a_one_group_group_norm_per_seed_and_a_layer_norm_on_its_units():
    norm = SeedChannelNorm(4, seeds=2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]]))
        norm.bias.copy_(torch.tensor([[0.0, 1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 0.0]]))
    z = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    for s in range(2):
        reference = torch.nn.GroupNorm(1, 4)
        with torch.no_grad():
            reference.weight.copy_(norm.weight[s])
            reference.bias.copy_(norm.bias[s])
        torch.testing.assert_close(norm.of_seed(z[s], s), reference(z[s]))
        by_hand = (z[s, 0] - z[s, 0].mean()) / torch.sqrt(z[s, 0].var(unbiased=False) + 1e-5)
        torch.testing.assert_close(
            norm.of_seed(z[s], s)[0], by_hand * norm.weight[s, :, None, None] + norm.bias[s, :, None, None]
        )
    grouped = norm.grouped(z.transpose(0, 1).reshape(3, 8, 5, 5)).view(3, 2, 4, 5, 5).transpose(0, 1)
    torch.testing.assert_close(grouped, torch.stack([norm.of_seed(z[s], s) for s in range(2)]))
    # the net: both layouts agree, and every hidden layer lists its norm's entries for resets
    net = _conv_net(layer_norm=True, crelu=True)
    x = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seed_by_seed = net(x)[0]
    net.grouped = True
    torch.testing.assert_close(net(x)[0], seed_by_seed, rtol=1e-5, atol=1e-5)
    assert all({entry.fresh for entry in group.norm} == {0.0, 1.0} for group in net.unit_groups())
    assert [len(layer.norm) for layer in net.weight_layers()] == [2, 2, 2, 2, 2, 0]
    assert len(net.parameter_views()) == len(list(net.parameters()))


def test_a_reset_conv_unit_zeroes_both_outgoing_channels_and_restarts_its_norm_entries():
    net = _conv_net(layer_norm=True, crelu=True)
    settings = LearnerSettings(
        algorithm="redo", step_size=0.1, method=ReDoConfig(threshold=0.5, reset_period=1, init="default")
    )
    learner, redo = build_learner(net, settings, [0, 1], "cpu", per_seed_cross_entropy)
    with torch.no_grad():  # move the norms off their start, so that a restart shows
        for norm in net.conv_norms:
            norm.weight.fill_(3.0)
            norm.bias.fill_(0.5)
    group = net.unit_groups()[0]
    before = net.conv2.weight.detach().clone().view(2, 64, 64, 3, 3)
    redo.reinitialise(group, 1, torch.tensor([5, 9]))  # conv1's channels 5 and 9 of seed 1
    after = net.conv2.weight.detach().view(2, 64, 64, 3, 3)
    zeroed = torch.zeros(64, 64, dtype=torch.bool)
    zeroed[:, [10, 11, 18, 19]] = True  # both CReLU outputs of each reset channel, every kernel tap
    assert (after[1][zeroed] == 0).all() and torch.equal(after[1][~zeroed], before[1][~zeroed])
    assert torch.equal(after[0], before[0])  # the other seed untouched
    gain, bias = net.conv_norms[0].weight.detach(), net.conv_norms[0].bias.detach()
    assert gain[1, [5, 9]].tolist() == [1.0, 1.0] and bias[1, [5, 9]].tolist() == [0.0, 0.0]
    assert (gain[1, :5] == 3.0).all() and (gain[0] == 3.0).all()
    # and in a learner step at threshold 0.5, some units of both seeds are reset
    x = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    learner.learn(x, torch.zeros(2, 4, dtype=torch.long))
    assert (redo.replaced_total > 2).all()


@pytest.mark.parametrize(
    "options", [{"crelu": True}, {"layer_norm": True}, {"layer_norm": True, "crelu": True}]
)
def test_each_seed_of_a_conv_net_trains_alone_as_in_a_batch_with_cbp(options, one_torch_thread):
    """Bit for bit at one torch thread, as a trial on one CPU runs (several threads split a batched
    product by the batch, so their sums depend on S)."""
    settings = LearnerSettings(
        algorithm="cbp",
        step_size=0.01,
        momentum=0.9,
        cbp=CBPConfig(replacement_rate=0.05, maturity_threshold=2),
    )
    x = torch.randn(3, 5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 2, (3, 5), generator=torch.Generator().manual_seed(3))
    seeds = [4, 1, 7]
    batch = _conv_net(seeds, **options)
    learner, cbp = build_learner(batch, settings, seeds, "cpu", per_seed_cross_entropy)
    losses = [learner.learn(x, y)[0] for _ in range(4)]
    assert (cbp.replaced_total > 0).all()
    for s, seed in enumerate(seeds):
        alone = _conv_net([seed], **options)
        single, _ = build_learner(alone, settings, [seed], "cpu", per_seed_cross_entropy)
        assert [single.learn(x[s : s + 1], y[s : s + 1])[0].item() for _ in range(4)] == [
            loss[s].item() for loss in losses
        ]
        for a, b in zip(batch.parameter_views(), alone.parameter_views(), strict=True):
            assert torch.equal(a.of()[s], b.of()[0])


@pytest.mark.parametrize(
    "options", [{"crelu": True}, {"layer_norm": True}, {"layer_norm": True, "crelu": True}]
)
def test_ppo_nets_take_both_options_and_the_runners_act_with_them(options):
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    policy = GaussianPolicy(5, 2, hidden=(7, 6), generators=generators, **options)
    value = ValueNetwork(5, hidden=(7, 6), generators=generators, **options)
    wide = 2 if options.get("crelu") else 1
    assert [layer.weight.shape[2] for layer in value.layers] == [5, 7 * wide, 6 * wide]
    assert (value.norms is not None) == bool(options.get("layer_norm"))
    with torch.no_grad():  # off the initial gains and biases, so that the copy must take them
        for parameter in policy.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(4)))
    rows = [1, 0, 0, 1]
    obs = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    assert_runners_act_as(policy, obs, rows)
    # the value net learns by autograd with CBP over its CReLU / normed units
    settings = LearnerSettings(
        algorithm="cbp",
        optimizer="adam",
        step_size=1e-3,
        cbp=CBPConfig(replacement_rate=0.2, maturity_threshold=1),
    )
    learner, cbp = build_learner(value, settings, [0, 1], "cpu", per_seed_mse)
    x = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(5))
    for _ in range(4):
        learner.learn(x, torch.ones(2, 8, 1))
    assert (cbp.replaced_total > 0).all()


def _write(tmp_path, sweep: dict) -> str:
    path = tmp_path / "options.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0], "num_tasks": 1, "storage": str(tmp_path / "r"), **sweep}))
    return str(path)


def test_the_schema_offers_the_options_where_they_apply_and_names_the_key(tmp_path):
    rl = {
        "name": "options",
        "problem": {"name": "rl", "env": "Hopper-v5"},
        "algorithms": [{"algorithm": "ppo"}],
    }
    (trial,) = load_sweep(_write(tmp_path, {**rl, "network": {"layer_norm": True, "crelu": True}})).trials
    assert trial["network"]["layer_norm"] is True and trial["network"]["crelu"] is True
    with pytest.raises(SweepError) as error:
        load_sweep(_write(tmp_path, {**rl, "network": {"crelu": True, "activation": "tanh"}}))
    assert "options.yaml" in str(error.value) and "activation must be relu" in str(error.value)
    with pytest.raises(SweepError, match="head_layers = 2, but this network's plain linear head has 1"):
        load_sweep(
            _write(
                tmp_path,
                {
                    **rl,
                    "network": {"crelu": True},
                    "algorithms": [{"algorithm": "plasticity_injection", "head_layers": 2}],
                },
            )
        )
