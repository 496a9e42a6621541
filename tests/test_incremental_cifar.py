"""Incremental CIFAR-100 (spec/problems.md §4): the CIFAR-100 reader and its shards, the ResNet-18
and its unit groups under CBP's CIFAR variant, augmentation, the block schedule, early stopping,
exact resume, and one tiny sweep through Ray Tune and MLflow."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lop_ray.algos import CBPConfig, ContinualBackprop
from lop_ray.algos.optim import make_optimizer
from lop_ray.data.cifar100 import read_cifar100
from lop_ray.data.cifar_augment import augment, draw_augmentation, normalise
from lop_ray.data.idx import DataFormatError
from lop_ray.data.shards import load_dataset, prepare_dataset
from lop_ray.experiments.incremental_cifar import (
    ClassSplit,
    IncrementalCifarConfig,
    IncrementalCifarExperiment,
    config_from_trial,
)
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.nets.resnet import CifarResNet18
from lop_ray.schema import SweepError, load_sweep
from tests.cifar_files import read_back, write_cifar100

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root / "raw", num_classes=NUM_CLASSES, train_per_class=6, test_per_class=2)
    prepare_dataset("cifar100", root / "raw", root / "data")
    return root / "data"


@pytest.fixture(scope="module")
def splits(prepared):
    return load_dataset("cifar100", prepared, "train"), load_dataset("cifar100", prepared, "test")


# --- the reader and the shards ------------------------------------------------------------------
def test_cifar100_pickles_read_back_exactly_channel_first(tmp_path):
    write_cifar100(tmp_path, num_classes=100, train_per_class=2, test_per_class=1)
    for split in ("train", "test"):
        images, labels = read_cifar100(tmp_path, split)
        expected_images, expected_labels = read_back(tmp_path, split)
        assert images.shape == (len(expected_labels), 3, 32, 32) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as stream:
        row = pickle.load(stream, encoding="bytes")[b"data"][0]
    # channel-major rows: 1024 red, then green, then blue values, each row by row
    assert images.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(read_cifar100(tmp_path, "train")[0][0, 1, 2, 3], row[1024 + 2 * 32 + 3])


def _corrupt(tmp_path, name: str, content: bytes | None) -> None:
    path = tmp_path / "cifar-100-python" / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("meta", None, "meta: missing"),
        ("test", None, "test: missing"),
        ("train", "truncated", "train: not a CIFAR-100 pickle (truncated or foreign)"),
        ("train", pickle.dumps([1, 2, 3], protocol=2), "train: not a CIFAR-100 pickle: holds a list"),
        (
            "train",
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),
            "train: missing keys [b'fine_labels']",
        ),
        (
            "train",
            pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}),
            "b'data' must be an N×3072 uint8 array, got (2, 100) uint8",
        ),
        (
            "train",
            pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}),
            "fine labels must be 0..99",
        ),
        ("train", pickle.dumps({b"data": _Evil()}), "refuses to load builtins.print"),
    ],
)
def test_missing_truncated_or_foreign_files_are_refused_by_name(tmp_path, name, content, message):
    write_cifar100(tmp_path, num_classes=100, train_per_class=1, test_per_class=1)
    if content == "truncated":
        content = (tmp_path / "cifar-100-python" / "train").read_bytes()[:5000]
    _corrupt(tmp_path, name, content)
    split = "test" if name == "test" else "train"
    with pytest.raises(DataFormatError) as error:
        read_cifar100(tmp_path, split)
    assert message in str(error.value)
    assert str(tmp_path / "cifar-100-python" / name) in str(error.value)


def test_prepare_writes_uint8_channel_first_train_and_test_shards(tmp_path, capsys):
    from lop_ray.cli import main

    write_cifar100(tmp_path / "raw", num_classes=100, train_per_class=3, test_per_class=1)
    assert (
        main(["data", "prepare", "cifar100", "--src", str(tmp_path / "raw"), "--dest", str(tmp_path / "d")])
        == 0
    )
    for split in ("train", "test"):
        loaded = load_dataset("cifar100", tmp_path / "d", split)
        images, labels = read_back(tmp_path / "raw", split)
        assert loaded.images.dtype == np.uint8 and loaded.images.shape[1:] == (3, 32, 32)
        np.testing.assert_array_equal(loaded.images, images)
        np.testing.assert_array_equal(loaded.labels, labels)
        assert (loaded.num_classes, loaded.pixel_max) == (100, 255.0)
    assert main(["data", "prepare", "cifar100", "--dest", str(tmp_path / "e")]) != 0
    assert "--src DIR is required" in capsys.readouterr().err


# --- augmentation ---------------------------------------------------------------------------------
def test_each_image_is_flipped_cropped_and_rotated_as_torchvision_does_it():
    x = normalise(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    params = draw_augmentation(8, torch.Generator().manual_seed(3))
    params["degrees"][0] = 15.0
    params["flip"][:2] = torch.tensor([True, False])
    out = augment(x, params)
    for i in range(8):
        image = TF.horizontal_flip(x[i]) if params["flip"][i] else x[i]
        image = TF.pad(image, [4], padding_mode="reflect")
        top, left = (int(v) for v in params["offsets"][i])
        image = TF.crop(image, top, left, 32, 32)
        image = TF.rotate(image, float(params["degrees"][i]), interpolation=InterpolationMode.NEAREST, fill=0)
        torch.testing.assert_close(out[i], image, rtol=0, atol=0)
    assert len({float(d) for d in params["degrees"]}) == 8  # every image its own angle


def test_augmentation_draws_only_from_the_given_generator():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = draw_augmentation(50, torch.Generator().manual_seed(1))
    b = draw_augmentation(50, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert 0 <= int(a["offsets"].min()) and int(a["offsets"].max()) <= 8
    assert 0.0 <= float(a["degrees"].min()) and float(a["degrees"].max()) <= 15.0


# --- the network and CBP ----------------------------------------------------------------------------
def test_resnet18_is_the_papers_modification_of_torchvisions():
    net = CifarResNet18(100, generator=torch.Generator().manual_seed(0))
    r = net.resnet
    assert (r.conv1.kernel_size, r.conv1.stride, r.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(r.maxpool, nn.Identity)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(
        c.bias is not None and not c.bias.any() for c in convs
    )  # incl. 3 downsample
    assert r.fc.in_features == 512 and r.fc.out_features == 100 and not r.fc.bias.any()
    # Kaiming normal, fan-in, ReLU gain: std √(2/fan_in); fc with the linear gain
    w = r.layer4[1].conv2.weight.detach()
    assert abs(float(w.std()) - (2 / w[0].numel()) ** 0.5) < 0.02 * (2 / w[0].numel()) ** 0.5
    assert abs(float(r.fc.weight.detach().std()) - (1 / 512) ** 0.5) < 0.05 * (1 / 512) ** 0.5
    logits, features = net(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 100)
    groups = net.unit_groups()
    assert len(groups) == len(features) == 17
    assert sum(g.width for g in groups) == sum(h.shape[1] for h in features) == 3904
    assert features[0].shape == (3, 64, 32, 32) and features[-1].shape == (3, 512)
    assert groups[-1].outgoing is r.fc and groups[0].outgoing is r.layer1[0].conv1
    assert groups[5].outgoing is groups[6].incoming is r.layer2[0].conv2
    assert groups[6].outgoing is r.layer2[1].conv1  # the next conv in module order, not the downsample
    downsample = {id(m) for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    assert (
        not {id(g.incoming) for g in groups} & downsample
        and not {id(g.outgoing) for g in groups} & downsample
    )


def _cbp(net, fidelity: str, optimizer):
    original = fidelity == "original"
    config = CBPConfig(
        replacement_rate=0.25,
        maturity_threshold=0,
        util_type="contribution",
        accumulate=True,
        replacement_base="width" if original else "eligible",
        utility_average="cumulative" if original else "ema",
        init_distribution="normal" if original else "uniform",
        bias_correction=not original,
        reset_optimizer_state=not original,
    )
    return ContinualBackprop(net.unit_groups(), optimizer, config, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fidelity", ["original", "corrected"])
def test_cbp_replaces_resnet_units_filter_norm_and_outgoing(fidelity):
    torch.manual_seed(0)
    net = CifarResNet18(10, width=8, generator=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(net.parameters(), "sgd", 0.1, weight_decay=5e-4, momentum=0.9)
    cbp = _cbp(net, fidelity, optimizer)
    for _ in range(2):  # a momentum buffer exists after the first step
        logits, features = net(torch.randn(4, 3, 32, 32))
        optimizer.zero_grad()
        logits.sum().backward()
        optimizer.step()
        with torch.no_grad():
            for module in net.modules():  # BN state that a reset must visibly restore
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.add_(0.5)
                    module.running_var.add_(2.0)
        before = copy.deepcopy(net.state_dict())
        downsample = net.resnet.layer2[0].downsample[0].weight.detach().clone()
        cbp.after_step([h.detach() for h in features])
    group = net.unit_groups()[6]  # layer2[0].conv2 → layer2[1].conv1 (the downsample sits beside)
    units = torch.nonzero(cbp.state[6]["age"] == 0).reshape(-1)  # replaced in the last step
    assert len(units) == 4  # ρ = 0.25 of 16 units, all mature (original: of the width)
    # the previous layer's replaced units zeroed their columns of this layer's incoming weights
    kept_columns = torch.nonzero(cbp.state[5]["age"] > 0).reshape(-1)
    old = before["resnet.layer2.0.conv2.weight"][:, kept_columns]
    new = group.incoming.weight[:, kept_columns]
    assert not torch.equal(new[units], old[units])  # new filters drawn
    assert torch.all(group.incoming.bias[units] == 0)
    assert torch.all(group.norm.weight[units] == 1) and torch.all(group.norm.bias[units] == 0)
    assert torch.all(group.norm.running_mean[units] == 0) and torch.all(group.norm.running_var[units] == 1)
    # outgoing columns zeroed, except in the next layer's own replaced filters (drawn afresh after)
    next_kept = torch.nonzero(cbp.state[7]["age"] > 0).reshape(-1)
    assert len(next_kept) == 12 and torch.all(group.outgoing.weight[next_kept][:, units] == 0)
    others = torch.ones(group.width, dtype=torch.bool)
    others[units] = False
    assert torch.equal(new[others], old[others])
    assert torch.all(group.norm.weight[others] == before["resnet.layer2.0.bn2.weight"][others])
    assert torch.equal(net.resnet.layer2[0].downsample[0].weight, downsample)  # never replaced nor zeroed
    momentum = optimizer.state[group.incoming.weight]["momentum_buffer"][units]
    assert bool((momentum == 0).all()) == (fidelity == "corrected")  # original: stale momentum kept
    if fidelity == "original":
        state = cbp.state[6]
        assert torch.all(state["activation_sum"][units] > 0)  # the cumulative sum is never reset
        assert torch.all(state["age"][units] == 0)


def test_cifar_original_draws_new_filters_kaiming_normal():
    conv, nxt = nn.Conv2d(64, 400, 3), nn.Conv2d(400, 8, 3)
    from lop_ray.nets.units import UnitGroup

    group = UnitGroup("c", conv, nxt, "relu", nn.BatchNorm2d(400))
    optimizer = make_optimizer(list(conv.parameters()) + list(nxt.parameters()), "sgd", 0.1)
    for distribution in ("normal", "uniform"):
        config = CBPConfig(1.0, 0, util_type="weight", accumulate=True, init_distribution=distribution)
        cbp = ContinualBackprop([group], optimizer, config, torch.Generator().manual_seed(0))
        cbp.after_step([torch.rand(2, 400, 3, 3)])
        w = conv.weight.detach()
        assert abs(float(w.std()) - (2 / 576) ** 0.5) < 0.02 * (2 / 576) ** 0.5  # the same variance
        kurtosis = float(((w - w.mean()) ** 4).mean() / w.var() ** 2)
        assert abs(kurtosis - (3.0 if distribution == "normal" else 1.8)) < 0.1


# --- the schedule, the split, early stopping ---------------------------------------------------------
def test_step_sizes_restart_every_block_on_the_papers_schedule():
    config = IncrementalCifarConfig()
    sizes = [config.step_size(e) for e in range(400)]
    expected = [0.1] * 60 + [0.02] * 60 + [0.004] * 40 + [0.0008] * 40
    np.testing.assert_allclose(sizes, expected * 2, rtol=1e-12)


def test_validation_is_each_classs_first_images_in_file_order(splits):
    train, test = splits
    split = ClassSplit(train, test, seed=0, validation_per_class=2)
    assert sorted(split.order.tolist()) == list(range(NUM_CLASSES))
    for j, cls in enumerate(split.order.tolist()):
        in_file = np.nonzero(train.labels == cls)[0]
        assert split.validation[j].tolist() == in_file[:2].tolist()
        assert split.train[j].tolist() == in_file[2:].tolist()
        assert split.test[j].tolist() == np.nonzero(test.labels == cls)[0].tolist()
        assert torch.all(split.train_labels[split.train[j]] == j)  # labels follow the class order
    assert ClassSplit(train, test, seed=0, validation_per_class=2).order.tolist() == split.order.tolist()
    assert ClassSplit(train, test, seed=1, validation_per_class=2).order.tolist() != split.order.tolist()


def _tiny(algorithm: str = "bp", fidelity: str = "original", **overrides) -> IncrementalCifarConfig:
    original = fidelity == "original"
    cbp = None
    if algorithm == "cbp":
        cbp = CBPConfig(
            replacement_rate=0.05,
            maturity_threshold=2,
            util_type="contribution",
            accumulate=True,
            replacement_base="width" if original else "eligible",
            utility_average="cumulative" if original else "ema",
            init_distribution="normal" if original else "uniform",
            bias_correction=not original,
            reset_optimizer_state=not original,
        )
    learner = LearnerSettings(
        algorithm=algorithm,
        step_size=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        perturb_scale=1e-5 if algorithm == "snp" else 0.0,
        cbp=cbp,
    )
    settings = dict(
        width=4,
        classes_per_block=4,
        epochs_per_block=2,
        validation_per_class=2,
        train_batch=9,
        test_batch=5,
        validation_batch=4,
        probe_examples=12,
        reset_optimizer_state=not original,
        reset_bn_stats=not original,
        learner=learner,
    )
    return IncrementalCifarConfig(**{**settings, **overrides})


def test_early_stopping_restores_the_strictly_best_validation_epoch(splits, monkeypatch):
    experiment = IncrementalCifarExperiment(_tiny(epochs_per_block=4), *splits)
    scripted = iter([0.25, 0.5, 0.5, 0.25])  # epoch 2 is best; epoch 3 only ties it
    states = []
    evaluate = experiment._evaluate

    def scripted_evaluate(indices, batch_size, stream):
        loss, accuracy = evaluate(indices, batch_size, stream)
        if stream is None:  # validation
            states.append(copy.deepcopy(experiment.net.state_dict()))
            return loss, next(scripted)
        return loss, accuracy

    monkeypatch.setattr(experiment, "_evaluate", scripted_evaluate)
    rows = [experiment.run_step() for _ in range(4)]
    assert [r["classes"] for r in rows] == [4, 4, 4, 4] and experiment.num_seen == 8
    restored = experiment.net.state_dict()
    for key, value in states[1].items():
        assert torch.equal(restored[key], value), key
    assert not all(torch.equal(restored[k], v) for k, v in states[3].items())
    assert rows[-1]["block_validation_accuracy"] == 0.5
    assert rows[-1]["block_test_accuracy"] == max(r["test_accuracy"] for r in rows)


# --- tiny runs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["bp", "head_reset", "retrained_network", "snp", "cbp"])
def test_a_tiny_run_trains_adds_classes_and_measures_at_block_ends(splits, algorithm):
    experiment = IncrementalCifarExperiment(_tiny(algorithm), *splits)
    initial = copy.deepcopy(experiment.net.state_dict())
    rows = [experiment.run_step() for _ in range(4)]
    assert [r["classes"] for r in rows] == [4, 4, 8, 8]
    # two epochs per block: the drops at 30 % and 60 % of the block both fall on its second epoch
    assert [r["step_size"] for r in rows] == pytest.approx([0.05, 0.05 * 0.2**2] * 2, rel=1e-12)
    assert {"dormant_units_percent", "stable_rank", "weight_magnitude"} <= set(rows[0])  # the initial net
    assert "dormant_units_percent_seen" not in rows[0]
    for row in (rows[1], rows[3]):
        assert {"block_test_accuracy", "dormant_units_percent_seen", "stable_rank_seen"} <= set(row)
    assert "dormant_units_percent" in rows[1] and "dormant_units_percent" in rows[3]  # classes 8-9 to come
    assert not any(k.startswith("test_accuracy_class") for r in rows for k in r)  # only once all are in
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert 0 <= rows[0]["stable_rank"] <= 16
    assert not all(torch.equal(initial[k], v) for k, v in experiment.net.state_dict().items())
    if algorithm == "cbp":
        assert rows[-1]["replaced_units"] > 0


def test_every_algorithm_of_a_seed_sees_the_same_class_order(splits):
    orders = {a: IncrementalCifarExperiment(_tiny(a), *splits).split.order.tolist() for a in ("bp", "cbp")}
    assert orders["bp"] == orders["cbp"]


@pytest.mark.parametrize(
    "algorithm, fidelity", [("cbp", "original"), ("cbp", "corrected"), ("retrained_network", "original")]
)
def test_resumed_between_epochs_it_continues_bit_identically(splits, algorithm, fidelity):
    config = _tiny(algorithm, fidelity)
    straight = IncrementalCifarExperiment(config, *splits)
    expected = [straight.run_step() for _ in range(3)]

    first = IncrementalCifarExperiment(config, *splits)
    first.run_step()  # mid-block: the early-stopping candidate is part of the state
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first
    resumed = IncrementalCifarExperiment(config, *splits)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    rows = [resumed.run_step() for _ in range(2)]  # the block end, then the next block's first epoch
    assert rows == expected[1:]
    for key, value in straight.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key


# --- the sweep file ----------------------------------------------------------------------------------
TINY_SWEEP = """\
name: {name}
problem:
  name: incremental_cifar
  data: {data}
  classes_per_block: 4
  epochs_per_block: 1
  validation_per_class: 2
  probe_examples: 12
network: {{width: 4}}
seeds: [0]
num_tasks: 2
fidelity: {fidelity}
algorithms:
  - algorithm: bp
    step_size: 0.05
  - algorithm: cbp
    step_size: 0.05
    replacement_rate: 0.05
    maturity_threshold: 2
resources: {{cpu: 1}}
storage: {storage}
"""


@pytest.mark.parametrize("fidelity", ["original", "corrected"])
def test_fidelity_fills_in_the_cifar_variants_options(tmp_path, prepared, fidelity):
    path = tmp_path / "s.yaml"
    path.write_text(TINY_SWEEP.format(name="s", data=prepared, fidelity=fidelity, storage=tmp_path))
    sweep = load_sweep(path)
    assert sweep.steps_per_trial == 2
    cbp = next(t for t in sweep.trials if t["algorithm"] == "cbp")
    config = config_from_trial(cbp).learner.cbp
    original = fidelity == "original"
    assert (config.utility_average, config.init_distribution, config.replacement_base) == (
        ("cumulative", "normal", "width") if original else ("ema", "uniform", "eligible")
    )
    assert config.bias_correction is config.reset_optimizer_state is (not original)
    bp = config_from_trial(next(t for t in sweep.trials if t["algorithm"] == "bp"))
    assert (bp.learner.momentum, bp.learner.weight_decay, bp.step_size_decay) == (0.9, 5e-4, 0.2)


def test_bad_cifar_sweeps_are_refused_naming_the_key(tmp_path, prepared):
    path = tmp_path / "s.yaml"
    path.write_text(
        TINY_SWEEP.format(name="s", data=tmp_path / "nowhere", fidelity="original", storage=tmp_path)
    )
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    assert "problem.data" in str(error.value) and "prepare the dataset first" in str(error.value)
    text = TINY_SWEEP.format(name="s", data=prepared, fidelity="original", storage=tmp_path)
    path.write_text(text.replace("maturity_threshold: 2", "maturity_threshold: 2\n    util_type: adaptation"))
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    assert "algorithms[1].util_type" in str(error.value) and "'contribution'" in str(error.value)


def test_tiny_sweep_through_ray_tune_and_mlflow_matches_a_plain_loop(tmp_path, prepared, local_ray):
    from lop_ray.cli import main
    from lop_ray.sweep import run_sweep
    from lop_ray.tracking import trial_run_name
    from tests.test_sweep_ray import mlflow_runs

    path = tmp_path / "c.yaml"
    path.write_text(
        TINY_SWEEP.format(name="cifar", data=prepared, fidelity="original", storage=tmp_path / "r")
    )
    sweep = load_sweep(path)
    outcome = run_sweep(sweep, quiet=True)
    assert outcome.errors == 0
    client, parents, children = mlflow_runs(outcome.tracking_uri, sweep.name)
    assert len(children) == 2
    train, test = load_dataset("cifar100", prepared, "train"), load_dataset("cifar100", prepared, "test")
    by_name = {r.info.run_name: r for r in children}
    for trial in sweep.trials:
        experiment = IncrementalCifarExperiment(config_from_trial(trial), train, test)
        expected = [experiment.run_step() for _ in range(2)]
        run = by_name[trial_run_name(trial)]
        for key in ("test_accuracy", "train_loss", "block_test_accuracy", "dormant_units_percent_seen"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            reference = [row[key] for row in expected if key in row]
            assert [m.value for m in history] == reference, (trial["label"], key)
    assert main(["report", str(outcome.results_dir), "--export", str(tmp_path / "curves")]) == 0
    import pandas as pd

    curves = pd.read_csv(tmp_path / "curves" / "curves.csv")
    assert set(curves.metric) >= {"test_accuracy", "block_test_accuracy", "dormant_units_percent"}


# --- the paper's sweep files ---------------------------------------------------------------------------
CIFAR_SWEEPS = ("bp", "head_reset", "retrained_network", "snp", "cbp", "cbp_corrected")


def test_the_papers_cifar_sweeps_run_at_the_papers_scale(tmp_path, monkeypatch):
    from pathlib import Path

    sweeps = Path(__file__).resolve().parents[1] / "sweeps" / "cifar"
    assert {p.stem for p in sweeps.glob("*.yaml")} == set(CIFAR_SWEEPS)
    write_cifar100(tmp_path / "raw", num_classes=100, train_per_class=1, test_per_class=1)
    prepare_dataset("cifar100", tmp_path / "raw", tmp_path / "data" / "cifar100")
    monkeypatch.chdir(tmp_path)  # where a user submits from: the files name data/cifar100
    for name in CIFAR_SWEEPS:
        sweep = load_sweep(sweeps / f"{name}.yaml")
        algorithm = name.removesuffix("_corrected")
        assert {t["algorithm"] for t in sweep.trials} == {algorithm}
        assert sweep.steps_per_trial == 4000 and sorted(t["seed"] for t in sweep.trials) == list(range(30))
        assert sweep.document["fidelity"] == ("corrected" if name == "cbp_corrected" else "original")
        assert 0 < sweep.resources["gpu"] <= 1
        for trial in sweep.trials:
            config = config_from_trial(trial)
            assert trial["problem_settings"]["data"] == str(tmp_path / "data" / "cifar100")
            assert (config.classes_per_block, config.epochs_per_block, config.validation_per_class) == (
                5,
                200,
                50,
            )
            assert (config.width, config.probe_examples, config.step_size_decay) == (64, 1000, 0.2)
            learner = config.learner
            assert (learner.step_size, learner.momentum, learner.weight_decay) == (0.1, 0.9, 5e-4)
            assert learner.perturb_scale == (1e-5 if name == "snp" else 0.0)
            if algorithm in ("head_reset", "retrained_network"):
                assert config.reset_optimizer_state is False and config.reset_bn_stats is False
            if algorithm == "cbp":
                cbp = learner.cbp
                assert (cbp.replacement_rate, cbp.maturity_threshold, cbp.decay_rate) == (1e-5, 1000, 0.99)
                assert (cbp.util_type, cbp.accumulate, cbp.init) == ("contribution", True, "kaiming")
                original = name == "cbp"
                assert cbp.bias_correction is cbp.reset_optimizer_state is (not original)
                assert (cbp.utility_average, cbp.init_distribution, cbp.replacement_base) == (
                    ("cumulative", "normal", "width") if original else ("ema", "uniform", "eligible")
                )
            else:
                assert learner.cbp is None


def test_once_every_class_is_in_each_classs_test_accuracy_is_logged(splits):
    experiment = IncrementalCifarExperiment(_tiny(classes_per_block=5, epochs_per_block=1), *splits)
    rows = [experiment.run_step() for _ in range(2)]
    assert not any(k.startswith("test_accuracy_class") for k in rows[0])
    per_class = [rows[1][f"test_accuracy_class{j:03d}"] for j in range(NUM_CLASSES)]
    assert all(v in (0.0, 0.5, 1.0) for v in per_class)  # two test images per class
    assert "dormant_units_percent" not in rows[1] and "stable_rank_seen" in rows[1]  # no class to come
