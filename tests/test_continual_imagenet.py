"""Continual ImageNet (spec/problems.md §3): the 32×32 ImageNet readers on small files in the real
layouts, prepared shards, the conv net with a seed axis (each seed's initial draws and numbers those
of the single-seed net) and its unit groups under CBP, the binary task stream, learning, S seeds in
one experiment against each alone, exact resume, the sweep files, and one tiny sweep through Ray
Tune and MLflow."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lop_ray.algos import CBPConfig, ContinualBackprop
from lop_ray.algos.backprop import per_seed_cross_entropy
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.optim import SGD
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.algos.upgd import UPGDConfig
from lop_ray.data.class_pairs import ClassPairTasks
from lop_ray.data.idx import DataFormatError
from lop_ray.data.imagenet32 import read_imagenet32
from lop_ray.data.seeding import LEARNER, generator
from lop_ray.data.shards import ImageDataset, load_dataset, prepare_dataset, read_manifest
from lop_ray.experiments.continual_imagenet import (
    ContinualImageNetConfig,
    ContinualImageNetExperiment,
    config_from_trial,
)
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.nets.activations import init_bound
from lop_ray.nets.conv_net import ConvNet, LinearNet
from lop_ray.schema import SweepError, load_sweep
from tests.conftest import write_sweep
from tests.imagenet32_files import write_batch_files, write_class_files
from tests.mnist_files import write_mnist

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_SWEEPS = ROOT / "sweeps" / "imagenet"


# --- the raw files ------------------------------------------------------------------------------
def test_per_class_files_read_back_exactly(tmp_path):
    written = write_class_files(tmp_path, classes=3)
    for src in (tmp_path, tmp_path / "classes"):
        images, layout = read_imagenet32(src)
        assert layout == "classes" and images.dtype == np.uint8
        assert np.array_equal(images, written)


@pytest.mark.parametrize("npz", [False, True], ids=["pickled", "npz"])
def test_batch_files_give_each_labels_first_700_images_in_file_order(tmp_path, npz):
    expected = write_batch_files(tmp_path, classes=3, extra=15, npz=npz)
    images, layout = read_imagenet32(tmp_path)
    assert layout == "batches" and images.shape == (3, 700, 3, 32, 32)
    assert np.array_equal(images, expected)  # class c = label − 1, channel-major rows


def test_bad_class_files_are_errors_naming_the_file(tmp_path):
    write_class_files(tmp_path, classes=3)
    classes = tmp_path / "classes"
    np.save(classes / "1.npy", np.zeros((699, 3, 32, 32), np.uint8))
    with pytest.raises(DataFormatError, match=r"classes/1\.npy: holds \(699, 3, 32, 32\) uint8"):
        read_imagenet32(tmp_path)
    data = (classes / "0.npy").read_bytes()
    (classes / "1.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"classes/1\.npy: not a readable \.npy array \(truncated"):
        read_imagenet32(tmp_path)
    (classes / "1.npy").unlink()
    with pytest.raises(DataFormatError, match=r"classes/1\.npy: missing"):
        read_imagenet32(tmp_path)
    with pytest.raises(DataFormatError, match="no ImageNet 32×32 files"):
        read_imagenet32(tmp_path / "classes" / ".." / "..")


def test_bad_batch_files_are_errors_naming_the_file(tmp_path):
    write_batch_files(tmp_path, classes=2, extra=0)
    third = tmp_path / "train_data_batch_3"
    good = third.read_bytes()
    third.write_bytes(good[:1000])
    with pytest.raises(DataFormatError, match=r"train_data_batch_3: not a readable .* \(truncated"):
        read_imagenet32(tmp_path)
    third.write_bytes(pickle.dumps(os.system))  # a foreign pickle is refused, never run
    with pytest.raises(DataFormatError, match=r"train_data_batch_3: .*refusing to unpickle"):
        read_imagenet32(tmp_path)
    batch = pickle.loads(good)
    third.write_bytes(pickle.dumps({**batch, "labels": [0] * len(batch["labels"])}))
    with pytest.raises(DataFormatError, match=r"train_data_batch_3: labels span 0..0, expected 1-based"):
        read_imagenet32(tmp_path)
    third.write_bytes(pickle.dumps({"data": batch["data"][:, :100], "labels": batch["labels"]}))
    with pytest.raises(DataFormatError, match=r"train_data_batch_3: data is \(\d+, 100\) uint8"):
        read_imagenet32(tmp_path)
    third.write_bytes(pickle.dumps({"data": batch["data"][:5], "labels": batch["labels"][:5]}))
    with pytest.raises(
        DataFormatError, match=r"batch files hold \d+ images of label \d; every label 1..2 needs at least 700"
    ):
        read_imagenet32(tmp_path)
    third.unlink()
    with pytest.raises(DataFormatError, match=r"train_data_batch_3: missing"):
        read_imagenet32(tmp_path)


def test_prepare_splits_each_class_600_train_100_test(tmp_path, capsys):
    from lop_ray.cli import main

    written = write_class_files(tmp_path / "raw", classes=3)
    dest = tmp_path / "prepared"
    assert main(["data", "prepare", "imagenet32", "--src", str(tmp_path / "raw"), "--dest", str(dest)]) == 0
    assert "imagenet32 train: 1,800 images (3, 32, 32)" in capsys.readouterr().out
    manifest = read_manifest(dest)
    assert manifest["dataset"] == "imagenet32" and manifest["num_classes"] == 3
    assert manifest["source_layout"] == "classes"
    assert manifest["images_per_class"] == {"train": 600, "test": 100}
    train, test = load_dataset("imagenet32", dest, "train"), load_dataset("imagenet32", dest, "test")
    assert np.array_equal(train.images, written[:, :600].reshape(-1, 3, 32, 32))
    assert np.array_equal(test.images, written[:, 600:].reshape(-1, 3, 32, 32))
    assert train.labels.tolist() == [c for c in range(3) for _ in range(600)]
    assert test.labels.tolist() == [c for c in range(3) for _ in range(100)]
    assert (train.pixel_max, train.num_classes) == (255.0, 3)
    # bad raw files: a clear error naming the file, exit status 2, nothing prepared
    (tmp_path / "raw" / "classes" / "2.npy").write_bytes(b"\x93NUMPY")
    assert (
        main(["data", "prepare", "imagenet32", "--src", str(tmp_path / "raw"), "--dest", str(tmp_path / "x")])
        == 2
    )
    assert "classes/2.npy: not a readable .npy array" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_prepare_to_s3_and_load_from_there(tmp_path, s3_bucket):
    written = write_class_files(tmp_path / "raw", classes=2)
    uri = f"{s3_bucket}/prepared/imagenet32"
    assert prepare_dataset("imagenet32", tmp_path / "raw", uri).startswith(uri)
    test = load_dataset("imagenet32", uri, "test")
    assert np.array_equal(test.images, written[:, 600:].reshape(-1, 3, 32, 32))
    assert read_manifest(uri)["images_per_class"] == {"train": 600, "test": 100}


# --- the networks and CBP on them -------------------------------------------------------------
SEEDS = (3, 5, 7)


def _generators(seeds=SEEDS) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def _todays_layers(generator: torch.Generator, num_outputs: int = 2) -> list[nn.Module]:
    """The single-seed conv net as it was before the seed axis, drawn the same way: PyTorch modules,
    each layer's weight then bias U(±1/√fan_in) from the seed's generator, in forward order."""
    layers = [
        nn.Conv2d(3, 32, 5),
        nn.Conv2d(32, 64, 3),
        nn.Conv2d(64, 128, 3),
        nn.Linear(512, 128),
        nn.Linear(128, 128),
        nn.Linear(128, num_outputs),
    ]
    with torch.no_grad():
        for layer in layers:
            bound = 1.0 / math.sqrt(layer.weight[0].numel())
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layers


def _todays_forward(layers: list[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    conv1, conv2, conv3, fc1, fc2, fc3 = layers
    h1 = F.max_pool2d(F.relu(conv1(x)), 2)
    h2 = F.max_pool2d(F.relu(conv2(h1)), 2)
    h3 = F.max_pool2d(F.relu(conv3(h2)), 2)
    h4 = F.relu(fc1(h3.flatten(1)))
    h5 = F.relu(fc2(h4))
    return fc3(h5), [h1, h2, h3, h4, h5]


def test_conv_net_shape_init_and_unit_groups():
    net = ConvNet(generators=_generators())
    logits, features = net(torch.zeros(3, 5, 3, 32, 32))
    assert logits.shape == (3, 5, 2)
    assert [tuple(h.shape) for h in features] == [
        (3, 5, 32, 14, 14),
        (3, 5, 64, 6, 6),
        (3, 5, 128, 2, 2),
        (3, 5, 128),
        (3, 5, 128),
    ]
    groups = net.unit_groups()
    assert [(g.name, g.seeds, g.width, g.fan_in, g.fan_out_per_unit) for g in groups] == [
        ("conv1", 3, 32, 75, 1),
        ("conv2", 3, 64, 288, 1),
        ("conv3", 3, 128, 576, 4),
        ("fc1", 3, 128, 512, 1),
        ("fc2", 3, 128, 128, 1),
    ]
    assert [g.outgoing.shape for g in groups] == [
        (3, 64, 32, 3, 3),
        (3, 128, 64, 3, 3),
        (3, 128, 512),  # conv3's unit c owns fc1's columns 4c … 4c+3
        (3, 128, 128),
        (3, 2, 128),
    ]
    chain = [net.conv1, net.conv2, net.conv3, net.fc1, net.fc2, net.fc3]
    for group, layer, following in zip(groups, chain, chain[1:], strict=False):
        assert group.incoming.tensor is layer.weight and group.incoming_bias.tensor is layer.bias
        assert group.outgoing.tensor is following.weight and group.outgoing_bias.tensor is following.bias
        h = group.seed_activations(features[groups.index(group)])
        assert h.shape[:3] == (3, 5, group.width)
    # a grouped convolution's parameters, (S·out, in, k, k); linear layers (S, out, in)
    assert net.conv2.weight.shape == (3 * 64, 32, 3, 3) and net.fc1.weight.shape == (3, 128, 512)
    views = net.parameter_views()
    assert all(v.tensor is p for v, p in zip(views, net.parameters(), strict=True))
    assert all(v.seeds == 3 for v in views)
    assert views[0].of().data_ptr() == net.conv1.weight.data_ptr()  # views share the parameters
    for weight, bias in zip(views[::2], views[1::2], strict=True):  # default init: U(±1/√fan_in)
        bound = 1 / math.sqrt(weight.of()[0, 0].numel())
        for p in (weight.of(), bias.of()):
            assert p.abs().max() <= bound
            assert p[0].numel() < 32 or p.abs().max() > 0.9 * bound  # the whole range is used
    again = ConvNet(generators=_generators())
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters(), strict=True))


def test_each_seed_starts_from_exactly_its_single_seed_draws():
    """Seed s's slice of every parameter is what the single-seed net drew from s's generator (the
    same draws in the same order), whatever seeds share the batch."""
    net = ConvNet(generators=_generators())
    for s, seed_generator in enumerate(_generators()):
        todays = _todays_layers(seed_generator)
        params = [p for layer in todays for p in (layer.weight, layer.bias)]
        for view, expected in zip(net.parameter_views(), params, strict=True):
            assert torch.equal(view.of()[s], expected)
    linear = LinearNet(generators=_generators())
    for s, seed_generator in enumerate(_generators()):
        layer = nn.Linear(3072, 2)
        with torch.no_grad():
            layer.weight.uniform_(-1 / math.sqrt(3072), 1 / math.sqrt(3072), generator=seed_generator)
            layer.bias.uniform_(-1 / math.sqrt(3072), 1 / math.sqrt(3072), generator=seed_generator)
        assert torch.equal(linear.fc.weight[s], layer.weight) and torch.equal(linear.fc.bias[s], layer.bias)
    with pytest.raises(ValueError, match="one generator per seed"):
        ConvNet(generators=[])


# The convolutions' two layouts (`ConvNet.grouped`). Seed by seed is the same call a seed alone makes,
# so seed s's numbers are bit-identical to it (on the CPU, where the experiments' tests run); the
# batched matmuls of the fc layers are too, measured (each seed's product is its own GEMM). A grouped
# convolution may run another algorithm than S single ones (oneDNN does for conv1's 3 input channels:
# measured 1e-5 apart on logits of ~1e2), so it is checked to float32 rounding: relative 1e-5 of
# sums of ~75–576 products of inputs up to 255.
GROUPED_TOLERANCE = {"rtol": 1e-5, "atol": 1e-4}


@pytest.mark.parametrize("grouped", [False, True], ids=["seed_by_seed", "grouped"])
def test_each_seed_computes_what_its_single_seed_net_computes(grouped):
    net = ConvNet(generators=_generators())
    net.grouped = grouped
    x = torch.rand(3, 6, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 255
    logits, features = net(x)
    for s, seed_generator in enumerate(_generators()):
        expected, expected_features = _todays_forward(_todays_layers(seed_generator), x[s])
        got = [logits[s], *(h[s] for h in features)]
        for a, b in zip(got, [expected, *expected_features], strict=True):
            if grouped:
                torch.testing.assert_close(a, b, **GROUPED_TOLERANCE)
            else:
                assert torch.equal(a, b)
    # gradients too: each seed's are those of its own loss alone. They are compared in float64: where
    # two inputs of a ReLU or max-pool window are within the layouts' float32 rounding of each other
    # (grouped: ~1e-5 of logits ~1e2), the two may route a gradient differently, which moves every
    # gradient below it by a whole term (seen on CI: conv1's by 4e-3). In float64 no such near-tie
    # occurs at this size, so what remains is rounding.
    net = net.double()
    net.zero_grad()
    x = x.double()
    per_seed_cross_entropy(net(x)[0], torch.zeros(3, 6, dtype=torch.long)).sum().backward()
    todays = [layer.double() for layer in _todays_layers(_generators()[1])]
    F.cross_entropy(_todays_forward(todays, x[1])[0], torch.zeros(6, dtype=torch.long)).backward()
    expected = [p.grad for layer in todays for p in (layer.weight, layer.bias)]
    for view, grad in zip(net.parameter_views(), expected, strict=True):
        torch.testing.assert_close(view.of(view.tensor.grad)[1], grad, rtol=1e-9, atol=1e-12)


def _one_replacement(
    net: ConvNet, group_index: int, unit: int, seed: int, **config
) -> tuple[ContinualBackprop, SGD]:
    """CBP over one of the net's groups, `weight` utility, the unit's outgoing weights of seed
    `seed` made the smallest and only that seed's units mature, so exactly that unit of that seed is
    replaced at the first step."""
    group = net.unit_groups()[group_index]
    with torch.no_grad():
        group.outgoing_by_unit()[seed, :, unit] *= 1e-3
    opt = SGD(net.parameters(), lr=0.0, momentum=0.9)
    opt.apply_gradients([torch.ones_like(p) for p in net.parameters()])  # momentum buffers of 1 everywhere
    settings = dict(
        replacement_rate=1.0 / group.width, maturity_threshold=1, util_type="weight", accumulate=True
    )
    generators = [torch.Generator().manual_seed(10 + s) for s in range(net.seeds)]
    cbp = ContinualBackprop([group], opt, CBPConfig(**{**settings, **config}), generators)
    cbp.state[0]["age"][seed] = 1  # 2 after the step: mature; the other seeds' 1 is not
    return cbp, opt


@pytest.mark.parametrize(
    ("group_index", "unit", "next_layer"),
    [(0, 5, "conv2"), (2, 7, "fc1")],
    ids=["conv_to_conv", "conv_to_linear"],
)
def test_cbp_replaces_one_seeds_conv_unit_filter_and_outgoing_columns_only(group_index, unit, next_layer):
    net = ConvNet(generators=_generators())
    seed = 1
    cbp, opt = _one_replacement(net, group_index, unit, seed, init="default", bias_correction=False)
    group = net.unit_groups()[group_index]
    before = [v.of().clone() for v in net.parameter_views()]
    _, features = net(torch.rand(3, 4, 3, 32, 32) * 255)

    cbp.after_step([features[group_index]])

    assert cbp.replaced_total.tolist() == [0, 1, 0]
    incoming, outgoing = group.incoming.of(), group.outgoing_by_unit()
    index = {name: i for i, name in enumerate(("conv1", "conv2", "conv3", "fc1", "fc2", "fc3"))}
    old_incoming = before[2 * index[group.name]]
    old_outgoing = before[2 * index[next_layer]].reshape(outgoing.shape)
    others = [i for i in range(group.width) if i != unit]
    # a new filter, drawn from the seed's own generator as it draws alone (`default` bounds)
    bound = init_bound("default", "relu", group.fan_in, group.fan_out)
    assert bound == pytest.approx(1 / math.sqrt(group.fan_in))
    fresh = torch.empty(group.fan_in).uniform_(
        -bound, bound, generator=torch.Generator().manual_seed(10 + seed)
    )
    assert torch.equal(incoming[seed, unit].flatten(), fresh)
    assert torch.equal(incoming[seed, others], old_incoming[seed, others])
    assert group.incoming_bias.of()[seed, unit] == 0
    assert outgoing.shape[3] == (4 if next_layer == "fc1" else 9)  # 4 columns of fc1, or a 3×3 kernel
    assert (outgoing[seed, :, unit] == 0).all()
    assert torch.equal(outgoing[seed, :, others], old_outgoing[seed, :, others])
    assert torch.equal(group.outgoing_bias.of(), before[2 * index[next_layer] + 1])  # no bias correction
    # the other seeds: nothing changed anywhere
    for view, old in zip(net.parameter_views(), before, strict=True):
        for s in (0, 2):
            assert torch.equal(view.of()[s], old[s])
    # corrected: the replaced entries' momentum restarts, the rest (every other seed's too) keeps it
    buffers = (
        group.incoming.of(opt.state[group.incoming.tensor]["momentum_buffer"]),
        group.outgoing_by_unit(opt.state[group.outgoing.tensor]["momentum_buffer"]),
    )
    assert (buffers[0][seed, unit] == 0).all() and (buffers[0][seed, others] == 1).all()
    assert (buffers[1][seed, :, unit] == 0).all() and (buffers[1][seed, :, others] == 1).all()
    assert all((b[s] == 1).all() for b in buffers for s in (0, 2))


def test_cbp_on_conv_to_linear_weighs_each_column_by_its_own_outgoing_weights():
    """The original's utility for a flattened channel: o·|h − f̂| per column, then the mean over the
    unit's 4 columns (not mean(o) · mean|h − f̂|), for every seed."""
    net = ConvNet(generators=_generators((3, 4)))
    group = net.unit_groups()[2]
    opt = SGD(net.parameters(), lr=0.0)
    config = CBPConfig(decay_rate=0.5, util_type="adaptable_contribution")
    cbp = ContinualBackprop([group], opt, config, _generators((3, 4)))
    _, features = net(torch.rand(2, 6, 3, 32, 32) * 255)
    cbp.after_step([features[2]])
    for s in range(2):
        h = features[2][s]
        f_hat = h.mean(dim=(0, 2, 3))  # the running mean after one step, bias-corrected: this batch's mean
        deviation = (h - f_hat[None, :, None, None]).abs().mean(dim=0).reshape(128, 4)
        o = net.fc1.weight[s].abs().mean(dim=0).reshape(128, 4)
        g = group.incoming.of()[s].abs().mean(dim=(1, 2, 3))
        expected = 0.5 * (o * deviation).mean(dim=1) / g
        torch.testing.assert_close(cbp.state[0]["utility"][s], expected)
        assert not torch.allclose(expected, 0.5 * o.mean(dim=1) * deviation.mean(dim=1) / g)


def test_cbp_bias_correction_into_a_linear_layer_sums_the_channels_columns():
    net = ConvNet(generators=_generators())
    seed, unit, eta = 2, 9, CBPConfig().decay_rate
    cbp, _ = _one_replacement(net, 2, unit, seed, bias_correction=True)
    old_bias = net.fc1.bias.detach().clone()
    columns = net.fc1.weight[seed, :, 4 * unit : 4 * unit + 4].detach().clone()
    _, features = net(torch.rand(3, 4, 3, 32, 32) * 255)
    # the running mean after one step from 0, bias-corrected at age 2
    f_hat = (1 - eta) * features[2][seed, :, unit].mean() / (1 - eta**2)
    cbp.after_step([features[2]])
    torch.testing.assert_close(net.fc1.bias[seed], old_bias[seed] + columns.sum(dim=1) * f_hat)
    assert torch.equal(net.fc1.bias[[0, 1]], old_bias[[0, 1]])


def test_linear_baseline_has_no_hidden_units():
    net = LinearNet(generators=_generators())
    logits, features = net(torch.zeros(3, 4, 3, 32, 32))
    assert logits.shape == (3, 4, 2) and features == [] and net.unit_groups() == []
    assert net.fc.weight.shape == (3, 2, 3072)
    assert [v.shape for v in net.parameter_views()] == [(3, 2, 3072), (3, 2)]
    x = torch.rand(3, 4, 3, 32, 32) * 255
    for s in range(3):
        torch.testing.assert_close(net(x)[0][s], F.linear(x[s].flatten(1), net.fc.weight[s], net.fc.bias[s]))


# --- the task stream ---------------------------------------------------------------------------
def _dataset(classes: int, per_class: int, seed: int = 0, image=None) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    if image is None:
        images = rng.integers(0, 256, (classes * per_class, 3, 32, 32), dtype=np.uint8)
    else:
        images = np.stack([image(rng, c) for c in labels])
    order = rng.permutation(len(labels))  # rows in any order: the stream groups them by label
    return ImageDataset(images[order], labels[order].astype(np.int64), 255.0, classes)


def test_tasks_are_pairs_of_a_tiled_class_order_labelled_0_and_1():
    classes = 1000
    one = _dataset(classes, 1)
    tasks = ClassPairTasks(one, one, seed=4)
    pairs = [tasks.pair(t) for t in range(1000)]
    assert sorted(c for pair in pairs[:500] for c in pair) == list(range(classes))  # a permutation
    assert pairs[500:] == pairs[:500]  # tiled: tasks t and t + 500 are the same pair
    assert pairs[0] != pairs[1] and all(a != b for a, b in pairs)
    assert pairs[:5] != [ClassPairTasks(one, one, seed=5).pair(t) for t in range(5)]

    train, test = _dataset(6, 12, seed=1), _dataset(6, 3, seed=2)
    tasks = ClassPairTasks(train, test, seed=0)
    for t in (0, 4):
        first, second = tasks.pair(t)
        x, y, x_test, y_test = tasks.task(t)
        assert x.dtype == torch.float32 and x.shape == (24, 3, 32, 32) and x_test.shape == (6, 3, 32, 32)
        assert y.tolist() == [0] * 12 + [1] * 12 and y_test.tolist() == [0] * 3 + [1] * 3
        expected = np.concatenate([train.images[train.labels == first], train.images[train.labels == second]])
        assert torch.equal(x, torch.from_numpy(expected).float())  # unscaled 0..255, dataset order per class
        assert x.max() > 1
        expected_test = np.concatenate(
            [test.images[test.labels == first], test.images[test.labels == second]]
        )
        assert torch.equal(x_test, torch.from_numpy(expected_test).float())
    x, y, x_test, _ = ClassPairTasks(train, test, seed=0, train_per_class=5).task(4)  # quick runs
    assert y.tolist() == [0] * 5 + [1] * 5 and len(x_test) == 6
    full = tasks.task(4)[0]
    assert torch.equal(x, torch.cat([full[:5], full[12:17]]))
    with pytest.raises(DataFormatError, match="same number of images"):
        ClassPairTasks(ImageDataset(train.images[:-1], train.labels[:-1], 255.0, 6), test, seed=0)


def _settings(**learner) -> LearnerSettings:
    return LearnerSettings(**{"step_size": 0.01, "momentum": 0.9, **learner})


CBP_ORIGINAL = CBPConfig(
    replacement_rate=0.02,
    maturity_threshold=3,
    util_type="adaptable_contribution",
    accumulate=True,
    bias_correction=False,
    reset_optimizer_state=False,
    replacement_base="width",
    init="default",
)
LEARNERS = {  # id: (network, learner settings)
    "bp": ("conv_net", {}),
    "l2": ("conv_net", {"algorithm": "l2", "weight_decay": 1e-3}),
    "snp": ("conv_net", {"algorithm": "snp", "weight_decay": 1e-4, "perturb_scale": 1e-3}),
    "cbp_original": ("conv_net", {"algorithm": "cbp", "cbp": CBP_ORIGINAL}),
    "cbp_corrected": (
        "conv_net",
        {"algorithm": "cbp", "cbp": CBPConfig(replacement_rate=0.02, maturity_threshold=3)},
    ),
    "linear": ("linear", {"step_size": 1e-5}),
    "l2_init": ("conv_net", {"algorithm": "l2_init", "l2_init": 0.5, "momentum": 0.9}),
    "full_reset": (
        "conv_net",
        {"algorithm": "layer_reset", "method": LayerResetConfig(reset_period=3, layers=0)},
    ),
    "parseval": ("conv_net", {"algorithm": "parseval", "method": ParsevalConfig(parseval_strength=0.01)}),
    "snr": ("conv_net", {"algorithm": "snr", "method": SNRConfig(init="default")}),  # the net's own init
    "injection": (
        "conv_net",
        {"algorithm": "plasticity_injection", "method": InjectionConfig(injection_period=3, head_layers=3)},
    ),
    "upgd": ("conv_net", {"algorithm": "upgd", "optimizer": "upgd", "upgd": UPGDConfig(sigma=0.01)}),
}


def _config(
    network: str = "conv_net", epochs: int = 2, batch: int = 10, **learner
) -> ContinualImageNetConfig:
    return ContinualImageNetConfig(
        network=network, epochs_per_task=epochs, batch_size=batch, learner=_settings(**learner)
    )


def test_every_algorithm_of_a_seed_sees_the_same_stream():
    train, test = _dataset(4, 10), _dataset(4, 2)

    def experiment(seeds, **learner):
        return ContinualImageNetExperiment(_config(epochs=1, batch=5, **learner), seeds, train, test)

    bp, cbp = experiment([3]), experiment([3], algorithm="cbp", cbp=CBP_ORIGINAL)
    snp = experiment([3], algorithm="snp", weight_decay=1e-4, perturb_scale=1e-3)
    batched = experiment([4, 3])  # seed 3 in a batch: its own stream still
    for t in (0, 1, 7):
        assert bp.tasks[0].pair(t) == cbp.tasks[0].pair(t) == snp.tasks[0].pair(t) == batched.tasks[1].pair(t)
        orders = [torch.randperm(20, generator=e.tasks[0].epoch_orders(t)) for e in (bp, cbp, snp)]
        orders.append(torch.randperm(20, generator=batched.tasks[1].epoch_orders(t)))
        assert all(torch.equal(orders[0], order) for order in orders[1:])
    assert all(torch.equal(a, b) for a, b in zip(bp.net.parameters(), cbp.net.parameters(), strict=True))
    assert all(
        torch.equal(a.of()[0], b.of()[1])
        for a, b in zip(bp.net.parameter_views(), batched.net.parameter_views(), strict=True)
    )
    other = batched.tasks[0]  # seed 4
    assert [other.pair(t) for t in range(4)] != [bp.tasks[0].pair(t) for t in range(4)]
    assert not torch.equal(torch.randperm(20, generator=other.epoch_orders(0)), orders[0])


def _bright_or_dark(rng: np.random.Generator, c: int) -> np.ndarray:
    """An easy pair: even classes dark, odd classes bright, with noise."""
    base = 200 if c % 2 else 50
    return np.clip(base + rng.normal(0, 30, (3, 32, 32)), 0, 255).astype(np.uint8)


def test_a_tiny_run_learns_an_easy_pair_and_zeroes_the_output_layer_at_each_task():
    train, test = _dataset(2, 60, image=_bright_or_dark), _dataset(2, 20, seed=1, image=_bright_or_dark)
    experiment = ContinualImageNetExperiment(
        _config(epochs=8, batch=20, step_size=0.001), [0, 1], train, test
    )
    metrics = experiment.run_step()
    assert len(metrics) == 2
    for first in metrics:
        assert first["test_accuracy"] >= 0.9 and first["train_accuracy"] >= 0.9  # chance is 0.5
        assert first["first_epoch_train_accuracy"] <= first["train_accuracy"]
        assert first["tasks"] == 1 and first["test_loss"] < math.log(2)
        assert first["weight_magnitude"] > 0 and "replaced_units" not in first
    assert metrics[0] != metrics[1]  # two seeds, two runs
    # the next task starts from a zero output layer (momentum kept), for every seed
    fc3 = experiment.net.fc3
    assert not (fc3.weight == 0).all()
    experiment._start_task()
    assert (fc3.weight == 0).all() and (fc3.bias == 0).all()
    assert (experiment.learner.optimizer.state[fc3.weight]["momentum_buffer"] != 0).any()
    assert len(experiment.net.weights()) == 6


def test_the_weight_magnitude_is_each_seeds_mean_absolute_weight():
    train, test = _dataset(4, 10), _dataset(4, 2)
    experiment = ContinualImageNetExperiment(_config(epochs=1), [0, 1], train, test)
    metrics = experiment.run_step()
    layers = [experiment.net.conv1, experiment.net.conv2, experiment.net.conv3]
    layers += [experiment.net.fc1, experiment.net.fc2, experiment.net.fc3]
    for s in range(2):
        weights = [layer.views()[0].of()[s] for layer in layers]
        expected = sum(float(w.abs().sum()) for w in weights) / sum(w.numel() for w in weights)
        assert metrics[s]["weight_magnitude"] == pytest.approx(expected, rel=1e-6)


def _todays_run(seed: int, config: ContinualImageNetConfig, train, test, tasks: int):
    """The single-seed experiment as it computed before the seed axis (backprop and L2): PyTorch
    modules drawn from (seed, LEARNER, 0), F.cross_entropy, this repository's SGD, the seed's own
    stream; output layer zeroed at each task."""
    layers = _todays_layers(generator(seed, LEARNER, 0))
    params = [p for layer in layers for p in (layer.weight, layer.bias)]
    settings = config.learner
    opt = SGD(params, lr=settings.step_size, momentum=settings.momentum, weight_decay=settings.weight_decay)
    stream = ClassPairTasks(train, test, seed, config.train_images_per_class)
    rows = []
    for task in range(tasks):
        with torch.no_grad():
            layers[-1].weight.zero_()
            layers[-1].bias.zero_()
        x, y, x_test, y_test = stream.task(task)
        shuffles = stream.epoch_orders(task)
        accuracy, loss = [], []
        for _ in range(config.epochs_per_task):
            order = torch.randperm(len(y), generator=shuffles)
            batches = order.split(config.batch_size)
            scores = torch.zeros(2)
            for index in batches:
                output, _ = _todays_forward(layers, x[index])
                batch_loss = F.cross_entropy(output, y[index])
                opt.apply_gradients(torch.autograd.grad(batch_loss, params))
                scores += torch.stack(
                    [(output.argmax(dim=1) == y[index]).float().mean(), batch_loss.detach()]
                )
            accuracy.append(float(scores[0]) / len(batches))
            loss.append(float(scores[1]) / len(batches))
        with torch.no_grad():
            output, _ = _todays_forward(layers, x_test)
        rows.append(
            {
                "test_accuracy": float((output.argmax(dim=1) == y_test).float().mean()),
                "test_loss": float(F.cross_entropy(output, y_test)),
                "train_accuracy": accuracy[-1],
                "train_loss": loss[-1],
                "first_epoch_train_accuracy": accuracy[0],
            }
        )
    return rows, params


# One seed (S = 1) against today's single-seed code: the same draws, data and update, but a per-seed
# mean of unreduced losses for F.cross_entropy's own mean, and batched matmuls for PyTorch's linear
# layers. Measured here: the parameters bit-identical after 16 steps, the reported losses 1 ulp
# apart (the mean rounds differently; the gradients do not); so losses to relative 1e-6, the
# parameters to float32 rounding in case another CPU's GEMM rounds the batched product otherwise.
TODAY_TOLERANCE = {"rel": 1e-6, "abs": 1e-7}


@pytest.mark.parametrize("learner", ["bp", "l2"])
def test_one_seed_computes_todays_single_seed_numbers(learner):
    train, test = _dataset(4, 10), _dataset(4, 3)
    network, settings = LEARNERS[learner]
    config = _config(network, **settings)
    experiment = ContinualImageNetExperiment(config, [2], train, test)
    got = [experiment.run_step()[0] for _ in range(2)]
    expected, params = _todays_run(2, config, train, test, tasks=2)
    for row, today in zip(got, expected, strict=True):
        for key, value in today.items():
            assert row[key] == pytest.approx(value, **TODAY_TOLERANCE), key
    for view, param in zip(experiment.net.parameter_views(), params, strict=True):
        torch.testing.assert_close(view.of()[0], param.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_each_seed_in_a_batch_of_three_computes_what_it_computes_alone(learner):
    """Bit for bit on the CPU: the convolutions run seed by seed there (the same calls as alone),
    each seed's batched matmul is its own GEMM, and every random draw is the seed's own (its
    generator for new units, counter-based noise on its key for shrink-and-perturb)."""
    train, test = _dataset(4, 10), _dataset(4, 3)
    network, settings = LEARNERS[learner]
    config = _config(network, **settings)
    batched = ContinualImageNetExperiment(config, [1, 2, 3], train, test)
    together = [batched.run_step() for _ in range(2)]
    for s, seed in enumerate([1, 2, 3]):
        alone = ContinualImageNetExperiment(config, [seed], train, test)
        assert [alone.run_step()[0] for _ in range(2)] == [step[s] for step in together], seed
        for mine, theirs in zip(batched.net.parameter_views(), alone.net.parameter_views(), strict=True):
            assert torch.equal(mine.of()[s], theirs.of()[0])
    if "cbp" in learner:
        assert all(m["replaced_units"] > 0 for m in together[-1])
        assert len({m["replaced_units"] for m in together[-1]} | {m["test_loss"] for m in together[-1]}) > 1


def test_grouped_convolutions_follow_the_seed_by_seed_run_to_rounding():
    """The layout a CUDA device takes (one grouped call per layer), run on the CPU: the same run to
    float32 rounding over a few steps (see GROUPED_TOLERANCE)."""
    train, test = _dataset(4, 10), _dataset(4, 3)
    config = _config(epochs=1)
    loop, grouped = (ContinualImageNetExperiment(config, [1, 2], train, test) for _ in range(2))
    grouped.net.grouped = True
    a, b = loop.run_step(), grouped.run_step()
    for mine, theirs in zip(a, b, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    for x, y in zip(loop.net.parameters(), grouped.net.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_resumed_between_tasks_it_continues_bit_identically(learner):
    train, test = _dataset(4, 10), _dataset(4, 3)
    network, settings = LEARNERS[learner]
    config = _config(network, **settings)
    seeds = [1, 2, 3]
    straight = ContinualImageNetExperiment(config, seeds, train, test)
    expected = [straight.run_step() for _ in range(3)]

    first = ContinualImageNetExperiment(config, seeds, train, test)
    got = [first.run_step()]
    state = copy.deepcopy(first.state_dict())  # as saved to disk: not aliased to live tensors
    first.run_step()  # work past the checkpoint is lost with the process
    resumed = ContinualImageNetExperiment(config, seeds, train, test)
    resumed.load_state_dict(state)
    got += [resumed.run_step() for _ in range(2)]

    assert got == expected
    assert all(
        torch.equal(a, b) for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True)
    )
    if "cbp" in learner:
        assert all(m["replaced_units"] > 0 for m in expected[-1])
    with pytest.raises(
        ValueError, match=r"checkpoint holds seeds \[1, 2, 3\], this experiment runs \[1, 2\]"
    ):
        ContinualImageNetExperiment(config, [1, 2], train, test).load_state_dict(state)


# --- the sweep schema and the paper's sweep files ----------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A directory to submit from, with a tiny imagenet32 (2 classes in the real per-class layout)
    prepared at data/imagenet32, as the paper's sweep files expect."""
    root = tmp_path_factory.mktemp("submit")
    write_class_files(
        root / "raw",
        classes=2,
        images=lambda rng, c, n: np.stack([_bright_or_dark(rng, c) for _ in range(n)]),
    )
    prepare_dataset("imagenet32", root / "raw", root / "data" / "imagenet32")
    return root


@pytest.fixture
def submit_from(prepared, monkeypatch) -> Path:
    monkeypatch.chdir(prepared)
    return prepared


SWEEP = """\
name: {name}
problem: {{name: continual_imagenet, data: {data}, epochs_per_task: {epochs}, batch_size: 40,
          train_images_per_class: 40}}
network: {{architecture: conv_net}}
seeds: [0]
num_tasks: {tasks}
fidelity: {fidelity}
algorithms:
  - algorithm: bp
    step_size: 0.001
    momentum: 0.9
  - algorithm: cbp
    step_size: 0.001
    momentum: 0.9
    replacement_rate: 0.01
    maturity_threshold: 2
resources: {{cpu: 1}}
storage: {storage}
"""


def test_fidelity_resolves_the_conv_variants_options_and_stated_ones_win(tmp_path, submit_from):
    trials = {}
    for fidelity in ("original", "corrected"):
        text = SWEEP.format(
            name="m", data="data/imagenet32", epochs=1, tasks=1, fidelity=fidelity, storage=tmp_path
        )
        [bp, cbp] = load_sweep(write_sweep(tmp_path / f"{fidelity}.yaml", text)).trials
        trials[fidelity] = cbp
        assert bp["problem_settings"]["data"] == str(submit_from / "data" / "imagenet32")
    original, corrected = trials["original"]["hyperparameters"], trials["corrected"]["hyperparameters"]
    assert {
        k: original[k] for k in ("init", "replacement_base", "bias_correction", "reset_optimizer_state")
    } == {
        "init": "default",
        "replacement_base": "width",
        "bias_correction": False,
        "reset_optimizer_state": False,
    }
    assert (corrected["init"], corrected["replacement_base"]) == ("kaiming", "eligible")
    assert corrected["bias_correction"] and corrected["reset_optimizer_state"]
    assert original["accumulate"] is True  # the conv variant always accumulates
    stated = SWEEP.replace("maturity_threshold: 2", "maturity_threshold: 2\n    init: xavier").format(
        name="s", data="data/imagenet32", epochs=1, tasks=1, fidelity="original", storage=tmp_path
    )
    assert (
        load_sweep(write_sweep(tmp_path / "s.yaml", stated)).trials[1]["hyperparameters"]["init"] == "xavier"
    )
    config = config_from_trial(trials["original"])
    assert config.learner.cbp.replacement_base == "width" and config.learner.momentum == 0.9
    assert (config.network, config.epochs_per_task, config.batch_size) == ("conv_net", 1, 40)
    assert config.train_images_per_class == 40


BAD = """\
name: bad
problem: {{name: continual_imagenet, {problem}}}
network: {{architecture: {architecture}}}
num_tasks: 1
algorithms: [{{algorithm: bp, step_size: 0.1}}]
"""


def test_bad_imagenet_sweeps_are_refused_before_any_compute(tmp_path, submit_from):
    prepare_dataset("mnist", write_mnist(tmp_path / "raw"), tmp_path / "mnist")
    cases = {
        ("data: /nowhere", "conv_net"): "problem.data: /nowhere/manifest.json: not found",
        (f"data: {tmp_path / 'mnist'}", "conv_net"): "problem.data: .* holds 'mnist', not 'imagenet32'",
        (
            "data: data/imagenet32, epochs_per_task: 0",
            "conv_net",
        ): "problem.epochs_per_task: Input should be greater",
        ("epochs_per_task: 3", "conv_net"): "problem.data: required key is missing",
        ("data: data/imagenet32", "mlp"): "network.architecture: Input should be 'conv_net' or 'linear'",
    }
    for (problem, architecture), message in cases.items():
        path = write_sweep(tmp_path / "bad.yaml", BAD.format(problem=problem, architecture=architecture))
        with pytest.raises(SweepError, match=message):
            load_sweep(path)


PAPER = {
    # file: (algorithm, {key: grid}, tasks, fidelity, architecture)
    "bp.yaml": ("bp", {"step_size": {0.01, 0.001, 0.0001}}, 2000, "original", "conv_net"),
    "l2.yaml": ("l2", {"step_size": {0.03}, "weight_decay": {3e-6}}, 5000, "original", "conv_net"),
    "snp.yaml": (
        "snp",
        {"step_size": {0.01}, "weight_decay": {1e-5}, "perturb_scale": {1e-5}},
        5000,
        "original",
        "conv_net",
    ),
    "cbp.yaml": ("cbp", {"step_size": {0.01}, "replacement_rate": {3e-4}}, 5000, "original", "conv_net"),
    "cbp_corrected.yaml": (
        "cbp",
        {"step_size": {0.01}, "replacement_rate": {3e-4}},
        5000,
        "corrected",
        "conv_net",
    ),
    "linear.yaml": ("bp", {"step_size": {1e-4, 1e-5, 1e-6}}, 5000, "original", "linear"),
}
# seeds per Tune trial (bench/seed_batching_imagenet.py): 15 conv nets in grouped convolutions; the
# linear baseline's 30 seeds are one small batched matmul
SEEDS_PER_TRIAL = {"conv_net": 15, "linear": 30}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweep_files_run_at_the_papers_scale(name, submit_from):
    assert {p.name for p in IMAGENET_SWEEPS.glob("*.yaml")} == set(PAPER)
    algorithm, grids, tasks, fidelity, architecture = PAPER[name]
    sweep = load_sweep(IMAGENET_SWEEPS / name)
    assert sweep.problem == "continual_imagenet" and sweep.document["fidelity"] == fidelity
    assert 0 < sweep.resources["gpu"] < 1  # fractional: several Tune trials share a GPU
    assert {t["seed"] for t in sweep.trials} == set(range(30))
    points = math.prod(len(g) for g in grids.values())
    assert len(sweep.trials) == 30 * points
    # the seeds of a configuration train together, S per Tune trial, S dividing the 30 runs
    per_trial = SEEDS_PER_TRIAL[architecture]
    assert sweep.seeds_per_trial == per_trial and {t["seeds_per_trial"] for t in sweep.trials} == {per_trial}
    assert len(sweep.groups) == points * 30 // per_trial
    for group in sweep.groups:
        assert len(group) == per_trial and len({repr(t["hyperparameters"]) for t in group}) == 1
    # two 15-seed conv-net trials to a GPU (30 seeds), as four single-seed trials shared one before
    assert per_trial * round(1 / sweep.resources["gpu"]) >= 30
    for key, grid in grids.items():
        assert {t["hyperparameters"][key] for t in sweep.trials} == grid, key
    for trial in sweep.trials:
        assert trial["algorithm"] == algorithm and trial["num_steps"] == trial["num_tasks"] == tasks
        assert trial["problem_settings"] == {
            "dataset": "imagenet32",
            "data": str(submit_from / "data" / "imagenet32"),
            "epochs_per_task": 250,
            "batch_size": 100,
            "train_images_per_class": None,
        }
        assert trial["network"] == {"architecture": architecture, "layer_norm": False, "crelu": False}
        hyper = trial["hyperparameters"]
        assert (hyper["optimizer"], hyper["momentum"]) == ("sgd", 0.9)
        if algorithm == "cbp":
            assert (hyper["maturity_threshold"], hyper["decay_rate"], hyper["accumulate"]) == (
                100,
                0.99,
                True,
            )
            assert hyper["util_type"] == "adaptable_contribution" and hyper["weight_decay"] == 0
            original = fidelity == "original"
            assert hyper["bias_correction"] is hyper["reset_optimizer_state"] is (not original)
            assert (hyper["replacement_base"], hyper["init"]) == (
                ("width", "default") if original else ("eligible", "kaiming")
            )
    if algorithm == "cbp":  # stated in the file, not left to `fidelity:`
        [entry] = sweep.document["algorithms"]
        assert {"bias_correction", "reset_optimizer_state", "replacement_base", "init"} <= set(entry)


def test_the_trainable_builds_one_experiment_for_its_group_of_seeds(tmp_path, submit_from):
    from lop_ray.trainables.continual_imagenet import ContinualImageNetTrainable

    text = SWEEP.format(
        name="g", data="data/imagenet32", epochs=1, tasks=1, fidelity="original", storage=tmp_path
    ).replace("seeds: [0]", "seeds: [4, 5, 6]\nseeds_per_trial: 3")
    sweep = load_sweep(write_sweep(tmp_path / "g.yaml", text))
    bp, cbp = sweep.groups
    assert [t["seed"] for t in cbp] == [4, 5, 6] and {t["algorithm"] for t in cbp} == {"cbp"}
    # outside Ray the datasets are read from disk; `build_experiment` uses nothing of the actor
    experiment = ContinualImageNetTrainable.build_experiment(None, cbp, torch.device("cpu"))
    assert experiment.seeds == [4, 5, 6] and experiment.net.seeds == 3
    assert experiment.config == config_from_trial(cbp[0]) and experiment.cbp is not None
    assert [tasks.seed for tasks in experiment.tasks] == [4, 5, 6]


# --- through Ray Tune and MLflow -----------------------------------------------------------------
@pytest.mark.slow  # ~30 s of Ray and MLflow start-up alone; ~110 s on the shared 2-core machine
def test_a_tiny_sweep_through_ray_tune_and_mlflow_matches_a_plain_loop(tmp_path, submit_from, local_ray):
    from mlflow.tracking import MlflowClient

    from lop_ray.cli import main
    from lop_ray.sweep import run_sweep
    from lop_ray.tracking import trial_run_name

    data = submit_from / "data" / "imagenet32"
    text = SWEEP.format(
        name="tiny_imagenet", data=data, epochs=1, tasks=2, fidelity="original", storage=tmp_path / "r"
    ).replace("seeds: [0]", "seeds: [0, 1]\nseeds_per_trial: 2")  # each algorithm's 2 seeds in one trial
    sweep = load_sweep(write_sweep(tmp_path / "tiny.yaml", text))
    assert [len(group) for group in sweep.groups] == [2, 2]

    outcome = run_sweep(sweep, quiet=True)

    assert outcome.errors == 0
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep.name).experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("lop_ray.kind") == "trial"}
    assert len(children) == 4  # one MLflow run per seed
    train, test = load_dataset("imagenet32", data, "train"), load_dataset("imagenet32", data, "test")
    torch.set_num_threads(1)
    for trial in sweep.trials:  # each seed alone: what its seed-batched Tune trial logged
        experiment = ContinualImageNetExperiment(config_from_trial(trial), [trial["seed"]], train, test)
        expected = [experiment.run_step()[0] for _ in range(2)]
        run = children[trial_run_name(trial)]
        assert run.info.status == "FINISHED" and run.data.tags["problem"] == "continual_imagenet"
        for key in ("test_accuracy", "train_accuracy", "weight_magnitude"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.value for m in history] == [row[key] for row in expected], (trial["label"], key)
    assert main(["report", str(outcome.results_dir), "--export", str(tmp_path / "curves")]) == 0
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves" / "curves.csv")
    accuracy = curves[curves.metric == "test_accuracy"]
    assert len(accuracy) == 4 * 2 and set(accuracy.label) == {"bp", "cbp"}  # per task per seed
    assert (Path(outcome.results_dir) / "test_accuracy.png").exists()  # the headline figure
    assert json.loads((data / "manifest.json").read_text())["num_classes"] == 2
