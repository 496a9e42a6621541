"""Continual ImageNet (spec/problems.md §3): the 32×32 ImageNet readers on small files in the real
layouts, prepared shards, the conv net's unit groups under CBP, the binary task stream, learning,
exact resume, the sweep files, and one tiny sweep through Ray Tune and MLflow."""

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

from lop_ray.algos import CBPConfig, ContinualBackprop
from lop_ray.algos.optim import SGD
from lop_ray.data.class_pairs import ClassPairTasks
from lop_ray.data.idx import DataFormatError
from lop_ray.data.imagenet32 import read_imagenet32
from lop_ray.data.shards import ImageDataset, load_dataset, prepare_dataset, read_manifest
from lop_ray.experiments.continual_imagenet import (
    ContinualImageNetConfig,
    ContinualImageNetExperiment,
    config_from_trial,
)
from lop_ray.experiments.learner import LearnerSettings
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
def test_conv_net_shape_init_and_unit_groups():
    net = ConvNet(generator=torch.Generator().manual_seed(0))
    logits, features = net(torch.zeros(5, 3, 32, 32))
    assert logits.shape == (5, 2)
    assert [tuple(h.shape[1:]) for h in features] == [(32, 14, 14), (64, 6, 6), (128, 2, 2), (128,), (128,)]
    groups = net.unit_groups()
    assert [(g.name, g.width, g.fan_in, g.fan_out_per_unit) for g in groups] == [
        ("conv1", 32, 75, 1),
        ("conv2", 64, 288, 1),
        ("conv3", 128, 576, 4),
        ("fc1", 128, 512, 1),
        ("fc2", 128, 128, 1),
    ]
    chain = [net.conv1, net.conv2, net.conv3, net.fc1, net.fc2, net.fc3]
    assert all(g.incoming is a and g.outgoing is b for g, a, b in zip(groups, chain, chain[1:], strict=False))
    for layer in chain:  # PyTorch's default init: U(±1/√fan_in), weights and biases
        bound = 1 / math.sqrt(layer.weight[0].numel())
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound
            assert p.numel() < 32 or p.abs().max() > 0.9 * bound  # the whole range is used
    again = ConvNet(generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters(), strict=True))


def _one_replacement(net: ConvNet, group_index: int, unit: int, **config) -> tuple[ContinualBackprop, SGD]:
    """CBP over one of the net's groups, `weight` utility, the unit's outgoing weights made the smallest,
    so exactly that unit is replaced at the first step."""
    group = net.unit_groups()[group_index]
    with torch.no_grad():
        group.outgoing.weight[:, group.outgoing_columns(torch.tensor([unit]))] *= 1e-3
    opt = SGD(net.parameters(), lr=0.0, momentum=0.9)
    opt.apply_gradients([torch.ones_like(p) for p in net.parameters()])  # momentum buffers of 1 everywhere
    settings = dict(
        replacement_rate=1.0 / group.width, maturity_threshold=0, util_type="weight", accumulate=True
    )
    cbp = ContinualBackprop(
        [group], opt, CBPConfig(**{**settings, **config}), torch.Generator().manual_seed(1)
    )
    return cbp, opt


@pytest.mark.parametrize(
    ("group_index", "unit", "next_layer"),
    [(0, 5, "conv2"), (2, 7, "fc1")],
    ids=["conv_to_conv", "conv_to_linear"],
)
def test_cbp_replaces_a_conv_unit_filter_and_outgoing_columns(group_index, unit, next_layer):
    net = ConvNet(generator=torch.Generator().manual_seed(0))
    cbp, opt = _one_replacement(net, group_index, unit, init="default", bias_correction=False)
    group = net.unit_groups()[group_index]
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    _, features = net(torch.rand(4, 3, 32, 32) * 255)

    cbp.after_step([features[group_index]])

    assert cbp.replaced_total == 1
    incoming, outgoing = group.incoming, group.outgoing
    others = [i for i in range(group.width) if i != unit]
    assert not torch.equal(incoming.weight[unit], before[f"{group.name}.weight"][unit])  # a new filter
    assert incoming.weight[unit].abs().max() <= 1 / math.sqrt(group.fan_in)  # `default` bounds
    assert torch.equal(incoming.weight[others], before[f"{group.name}.weight"][others])
    assert incoming.bias[unit] == 0
    columns = group.outgoing_columns(torch.tensor([unit]))
    assert len(columns) == (4 if next_layer == "fc1" else 1)
    assert (outgoing.weight[:, columns] == 0).all()
    kept = torch.ones(outgoing.weight.shape[1], dtype=torch.bool)
    kept[columns] = False
    assert torch.equal(outgoing.weight[:, kept], before[f"{next_layer}.weight"][:, kept])
    assert torch.equal(outgoing.bias, before[f"{next_layer}.bias"])  # no bias correction asked
    # corrected: the replaced entries' momentum restarts, the rest keeps it
    buffers = opt.state[incoming.weight]["momentum_buffer"], opt.state[outgoing.weight]["momentum_buffer"]
    assert (buffers[0][unit] == 0).all() and (buffers[0][others] == 1).all()
    assert (buffers[1][:, columns] == 0).all() and (buffers[1][:, kept] == 1).all()


def test_cbp_on_conv_to_linear_weighs_each_column_by_its_own_outgoing_weights():
    """The original's utility for a flattened channel: o·|h − f̂| per column, then the mean over the
    unit's 4 columns (not mean(o) · mean|h − f̂|)."""
    net = ConvNet(generator=torch.Generator().manual_seed(3))
    group = net.unit_groups()[2]
    opt = SGD(net.parameters(), lr=0.0)
    cbp = ContinualBackprop([group], opt, CBPConfig(decay_rate=0.5, util_type="adaptable_contribution"), None)
    _, features = net(torch.rand(6, 3, 32, 32) * 255)
    h = features[2]
    cbp.after_step([h])
    f_hat = h.mean(dim=(0, 2, 3))  # the running mean after one step, bias-corrected: this batch's mean
    deviation = (h - f_hat[None, :, None, None]).abs().mean(dim=0).reshape(128, 4)
    o = net.fc1.weight.abs().mean(dim=0).reshape(128, 4)
    g = net.conv3.weight.abs().mean(dim=(1, 2, 3))
    expected = 0.5 * (o * deviation).mean(dim=1) / g
    torch.testing.assert_close(cbp.state[0]["utility"], expected)
    assert not torch.allclose(expected, 0.5 * o.mean(dim=1) * deviation.mean(dim=1) / g)


def test_cbp_bias_correction_into_a_linear_layer_sums_the_channels_columns():
    net = ConvNet(generator=torch.Generator().manual_seed(0))
    cbp, _ = _one_replacement(net, 2, 9, bias_correction=True)
    old_bias = net.fc1.bias.detach().clone()
    columns = net.fc1.weight[:, 36:40].detach().clone()
    _, features = net(torch.rand(4, 3, 32, 32) * 255)
    f_hat = features[2][:, 9].mean()
    cbp.after_step([features[2]])
    torch.testing.assert_close(net.fc1.bias, old_bias + columns.sum(dim=1) * f_hat)


def test_linear_baseline_has_no_hidden_units():
    net = LinearNet(generator=torch.Generator().manual_seed(0))
    logits, features = net(torch.zeros(3, 3, 32, 32))
    assert logits.shape == (3, 2) and features == [] and net.unit_groups() == []
    assert net.fc.weight.shape == (2, 3072)


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


def test_every_algorithm_of_a_seed_sees_the_same_stream():
    train, test = _dataset(4, 10), _dataset(4, 2)

    def experiment(seed, **learner):
        config = ContinualImageNetConfig(
            seed=seed, epochs_per_task=1, batch_size=5, learner=_settings(**learner)
        )
        return ContinualImageNetExperiment(config, train, test)

    bp, cbp = experiment(3), experiment(3, algorithm="cbp", cbp=CBP_ORIGINAL)
    snp = experiment(3, algorithm="snp", weight_decay=1e-4, perturb_scale=1e-3)
    for t in (0, 1, 7):
        assert bp.tasks.pair(t) == cbp.tasks.pair(t) == snp.tasks.pair(t)
        orders = [torch.randperm(20, generator=e.tasks.epoch_orders(t)) for e in (bp, cbp, snp)]
        assert torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])
    assert all(torch.equal(a, b) for a, b in zip(bp.net.parameters(), cbp.net.parameters(), strict=True))
    other = experiment(4)
    assert [other.tasks.pair(t) for t in range(4)] != [bp.tasks.pair(t) for t in range(4)]
    assert not torch.equal(torch.randperm(20, generator=other.tasks.epoch_orders(0)), orders[0])


def _bright_or_dark(rng: np.random.Generator, c: int) -> np.ndarray:
    """An easy pair: even classes dark, odd classes bright, with noise."""
    base = 200 if c % 2 else 50
    return np.clip(base + rng.normal(0, 30, (3, 32, 32)), 0, 255).astype(np.uint8)


def test_a_tiny_run_learns_an_easy_pair_and_zeroes_the_output_layer_at_each_task():
    train, test = _dataset(2, 60, image=_bright_or_dark), _dataset(2, 20, seed=1, image=_bright_or_dark)
    config = ContinualImageNetConfig(
        seed=0, epochs_per_task=8, batch_size=20, learner=_settings(step_size=0.001)
    )
    experiment = ContinualImageNetExperiment(config, train, test)
    first = experiment.run_step()
    assert first["test_accuracy"] >= 0.9 and first["train_accuracy"] >= 0.9  # chance is 0.5
    assert first["first_epoch_train_accuracy"] <= first["train_accuracy"]
    assert first["tasks"] == 1 and first["test_loss"] < math.log(2)
    # the next task starts from a zero output layer (momentum kept): the same pair, swapped or not
    assert not (experiment.net.fc3.weight == 0).all()
    experiment._start_task()
    assert (experiment.net.fc3.weight == 0).all() and (experiment.net.fc3.bias == 0).all()
    assert (experiment.learner.optimizer.state[experiment.net.fc3.weight]["momentum_buffer"] != 0).any()
    weights = [m.weight for m in experiment.net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert first["weight_magnitude"] > 0 and len(weights) == 6


@pytest.mark.parametrize(
    ("network", "learner"),
    [
        ("conv_net", {}),
        ("conv_net", {"algorithm": "snp", "weight_decay": 1e-4, "perturb_scale": 1e-3}),
        ("conv_net", {"algorithm": "cbp", "cbp": CBP_ORIGINAL}),
        ("conv_net", {"algorithm": "cbp", "cbp": CBPConfig(replacement_rate=0.02, maturity_threshold=3)}),
        ("linear", {"step_size": 1e-5}),
    ],
    ids=["bp", "snp", "cbp_original", "cbp_corrected", "linear"],
)
def test_resumed_between_tasks_it_continues_bit_identically(network, learner):
    train, test = _dataset(4, 10), _dataset(4, 3)
    config = ContinualImageNetConfig(
        seed=1, network=network, epochs_per_task=2, batch_size=10, learner=_settings(**learner)
    )
    straight = ContinualImageNetExperiment(config, train, test)
    expected = [straight.run_step() for _ in range(3)]

    first = ContinualImageNetExperiment(config, train, test)
    got = [first.run_step()]
    state = copy.deepcopy(first.state_dict())  # as saved to disk: not aliased to live tensors
    first.run_step()  # work past the checkpoint is lost with the process
    resumed = ContinualImageNetExperiment(config, train, test)
    resumed.load_state_dict(state)
    got += [resumed.run_step() for _ in range(2)]

    assert got == expected
    assert all(
        torch.equal(a, b) for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True)
    )
    if "cbp" in learner:
        assert expected[-1]["replaced_units"] > 0


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


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_sweep_files_run_at_the_papers_scale(name, submit_from):
    assert {p.name for p in IMAGENET_SWEEPS.glob("*.yaml")} == set(PAPER)
    algorithm, grids, tasks, fidelity, architecture = PAPER[name]
    sweep = load_sweep(IMAGENET_SWEEPS / name)
    assert sweep.problem == "continual_imagenet" and sweep.document["fidelity"] == fidelity
    assert 0 < sweep.resources["gpu"] < 1  # fractional: several trials share a GPU
    assert {t["seed"] for t in sweep.trials} == set(range(30))
    assert len(sweep.trials) == 30 * math.prod(len(g) for g in grids.values())
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
        assert trial["network"] == {"architecture": architecture}
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
    )
    sweep = load_sweep(write_sweep(tmp_path / "tiny.yaml", text))

    outcome = run_sweep(sweep, quiet=True)

    assert outcome.errors == 0
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep.name).experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("lop_ray.kind") == "trial"}
    assert len(children) == 2
    train, test = load_dataset("imagenet32", data, "train"), load_dataset("imagenet32", data, "test")
    torch.set_num_threads(1)
    for trial in sweep.trials:
        experiment = ContinualImageNetExperiment(config_from_trial(trial), train, test)
        expected = [experiment.run_step() for _ in range(2)]
        run = children[trial_run_name(trial)]
        assert run.info.status == "FINISHED" and run.data.tags["problem"] == "continual_imagenet"
        for key in ("test_accuracy", "train_accuracy", "weight_magnitude"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.value for m in history] == [row[key] for row in expected], (trial["label"], key)
    assert main(["report", str(outcome.results_dir), "--export", str(tmp_path / "curves")]) == 0
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves" / "curves.csv")
    accuracy = curves[curves.metric == "test_accuracy"]
    assert len(accuracy) == 2 * 2 and set(accuracy.label) == {"bp", "cbp"}  # per task per algorithm
    assert (Path(outcome.results_dir) / "test_accuracy.png").exists()  # the headline figure
    assert json.loads((data / "manifest.json").read_text())["num_classes"] == 2
