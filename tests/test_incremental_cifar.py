"""Incremental CIFAR-100 (spec/problems.md §4): the CIFAR-100 reader and its shards, the seed-axis
ResNet-18 (each seed's initial draws, its unit groups under CBP's CIFAR variant), augmentation, the
block schedule, per-seed early stopping, each seed of a batch against the seed alone, exact resume,
and one tiny seed-batched sweep through Ray Tune and MLflow."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from lop_ray.algos import CBPConfig, ContinualBackprop
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.optim import make_optimizer
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.algos.upgd import UPGDConfig
from lop_ray.data.cifar100 import read_cifar100
from lop_ray.data.cifar_augment import augment, draw_augmentation, normalise
from lop_ray.data.idx import DataFormatError
from lop_ray.data.shards import ImageDataset, load_dataset, prepare_dataset
from lop_ray.experiments.incremental_cifar import (
    ClassSplit,
    IncrementalCifarConfig,
    IncrementalCifarExperiment,
    config_from_trial,
)
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.nets.resnet import CifarResNet18
from lop_ray.nets.units import SeedView, UnitGroup
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
def _single_seed_resnet18(num_classes: int, width: int, generator: torch.Generator) -> ResNet:
    """The single-seed network as it was before the seed axis (torchvision's ResNet-18 with the
    paper's changes, initialised module by module from one generator): the reference for seed s."""
    with torch.random.fork_rng(devices=[]):
        base = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        for stage in (base.layer1, base.layer2, base.layer3, base.layer4):
            for block in stage:
                for name, child in list(block.named_modules()):
                    parent_name, _, attr = name.rpartition(".")
                    parent = block.get_submodule(parent_name) if parent_name else block
                    if isinstance(child, nn.Conv2d):
                        scaled = (child.in_channels * width // 64, child.out_channels * width // 64)
                        conv = nn.Conv2d(*scaled, child.kernel_size, child.stride, child.padding, bias=True)
                        setattr(parent, attr, conv)
                    elif isinstance(child, nn.BatchNorm2d):
                        setattr(parent, attr, nn.BatchNorm2d(child.num_features * width // 64))
        base.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=True)
        base.bn1 = nn.BatchNorm2d(width)
        base.maxpool = nn.Identity()
        base.fc = nn.Linear(8 * width, num_classes)
    with torch.no_grad():
        for module in base.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_in", nonlinearity="relu", generator=generator
                )
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.kaiming_normal_(base.fc.weight, nonlinearity="linear", generator=generator)
        nn.init.zeros_(base.fc.bias)
    return base


def _single_seed_forward(r: ResNet, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = F.relu(r.bn1(r.conv1(x)))
    features = [out]
    for block in (b for stage in (r.layer1, r.layer2, r.layer3, r.layer4) for b in stage):
        middle = F.relu(block.bn1(block.conv1(out)))
        identity = out if block.downsample is None else block.downsample(out)
        out = F.relu(block.bn2(block.conv2(middle)) + identity)
        features += [middle, out]
    features[-1] = torch.flatten(r.avgpool(out), 1)
    return r.fc(features[-1]), features


def test_resnet18_is_the_papers_modification_of_torchvisions():
    seeds = 2
    net = CifarResNet18(100, generators=[torch.Generator().manual_seed(s) for s in range(seeds)])
    r = net.resnet
    assert isinstance(r, ResNet) and isinstance(r.layer1[0], BasicBlock)  # torchvision's module tree
    assert (r.conv1.kernel_size, r.conv1.stride, r.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(r.maxpool, nn.Identity)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(  # incl. 3 downsample, each a grouped conv: one group per seed
        c.groups == seeds and c.bias is not None and not c.bias.any() for c in convs
    )
    assert r.conv1.weight.shape == (seeds * 64, 3, 3, 3) and r.bn1.num_features == seeds * 64
    assert r.fc.weight.shape == (seeds, 100, 512) and not r.fc.bias.any()
    # Kaiming normal, fan-in, ReLU gain: std √(2/fan_in); fc with the linear gain; per seed
    w = SeedView.split(r.layer4[1].conv2.weight, seeds).of()
    for s in range(seeds):
        assert abs(float(w[s].std()) - (2 / w[s, 0].numel()) ** 0.5) < 0.02 * (2 / w[s, 0].numel()) ** 0.5
        assert abs(float(r.fc.weight[s].detach().std()) - (1 / 512) ** 0.5) < 0.05 * (1 / 512) ** 0.5
    assert not torch.equal(w[0], w[1])
    logits, features = net(torch.randn(seeds, 3, 3, 32, 32))
    assert logits.shape == (seeds, 3, 100)
    groups = net.unit_groups()
    assert len(groups) == len(features) == 17 and all(g.seeds == seeds for g in groups)
    per_seed = [g.seed_activations(h) for g, h in zip(groups, features, strict=True)]
    assert sum(g.width for g in groups) == sum(h.shape[2] for h in per_seed) == 3904
    assert features[0].shape == (3, seeds * 64, 32, 32) and per_seed[0].shape == (seeds, 3, 64, 32, 32)
    assert per_seed[0].data_ptr() == features[0].data_ptr()  # a view
    assert features[-1].shape == per_seed[-1].shape == (seeds, 3, 512)
    assert groups[5].incoming.shape == (seeds, 128, 64, 3, 3)  # layer2[0].conv1
    assert groups[5].outgoing.shape == (seeds, 128, 128, 3, 3) and groups[5].norm[0].view.shape == (
        seeds,
        128,
    )
    assert groups[-1].outgoing.tensor is r.fc.weight and groups[-1].outgoing_bias.tensor is r.fc.bias
    assert groups[0].outgoing.tensor is r.layer1[0].conv1.weight
    assert groups[5].outgoing.tensor is groups[6].incoming.tensor is r.layer2[0].conv2.weight
    assert groups[6].outgoing.tensor is r.layer2[1].conv1.weight  # the next conv in module order
    downsample = {id(m.weight) for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    assert not {id(g.incoming.tensor) for g in groups} & downsample
    assert not {id(g.outgoing.tensor) for g in groups} & downsample
    views = net.parameter_views()
    assert [v.tensor for v in views] == list(net.parameters()) and {v.seeds for v in views} == {seeds}


def test_each_seeds_initial_network_is_exactly_its_single_seed_draws():
    """Seed s of an S-seed network starts from exactly the parameters that the single-seed network
    drew from s's generator (same draws, same order); its forward pass agrees to rounding: oneDNN
    picks other blockings for grouped and ungrouped convolutions (measured ≤ 2e-6 on the logits)."""
    seeds = [torch.Generator().manual_seed(10 + s) for s in range(3)]
    net = CifarResNet18(10, 8, seeds)
    references = [_single_seed_resnet18(10, 8, torch.Generator().manual_seed(10 + s)) for s in range(3)]
    views = net.seed_state_views()
    assert len(views) == len(references[0].state_dict()) - 20  # all but BN's shared batch counters
    for name, view in views.items():
        for s, reference in enumerate(references):
            assert torch.equal(view.of()[s], reference.state_dict()[name.removeprefix("resnet.")]), (name, s)
    x = torch.randn(3, 5, 3, 32, 32)
    logits, features = net(x)
    for s, reference in enumerate(references):
        expected, expected_features = _single_seed_forward(reference, x[s])
        torch.testing.assert_close(logits[s], expected, rtol=0, atol=1e-5)
        for group, h, e in zip(net.unit_groups(), features, expected_features, strict=True):
            torch.testing.assert_close(group.seed_activations(h)[s], e, rtol=0, atol=1e-4)


def test_resets_draw_each_seed_from_its_own_generator():
    def generators(first: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(first + s) for s in range(2)]

    net = CifarResNet18(10, 4, generators(0))
    alone = CifarResNet18(10, 4, generators(5)[1:])  # seed 1's draws, alone
    net.reset_head(generators(5))
    alone.reset_head(generators(6)[:1])
    assert torch.equal(net.fc.weight[1], alone.fc.weight[0])
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(1.0)
    net.reinitialize(generators(5))
    alone.reinitialize(generators(6)[:1])
    for name, view in net.seed_state_views().items():
        if "running" not in name:
            assert torch.equal(view.of()[1], alone.seed_state_views()[name].of()[0]), name
    assert torch.all(net.resnet.bn1.running_mean == 1)  # running statistics are left alone …
    net.reset_norm_statistics()
    assert torch.all(net.resnet.bn1.running_mean == 0)  # … until reset


def _cbp(net, fidelity: str, optimizer, maturity_threshold: int = 0):
    original = fidelity == "original"
    config = CBPConfig(
        replacement_rate=0.25,
        maturity_threshold=maturity_threshold,
        util_type="contribution",
        accumulate=True,
        replacement_base="width" if original else "eligible",
        utility_average="cumulative" if original else "ema",
        init_distribution="normal" if original else "uniform",
        bias_correction=not original,
        reset_optimizer_state=not original,
    )
    generators = [torch.Generator().manual_seed(1 + s) for s in range(net.seeds)]
    return ContinualBackprop(net.unit_groups(), optimizer, config, generators)


@pytest.mark.parametrize("fidelity", ["original", "corrected"])
def test_cbp_replaces_one_seeds_resnet_units_filter_norm_and_outgoing(fidelity):
    """Seed 0 replaces units (new filter, BN entries fresh, outgoing columns zeroed), seed 1, whose
    units are all young, is left exactly as it was, momentum included."""
    torch.manual_seed(0)
    net = CifarResNet18(10, 8, [torch.Generator().manual_seed(s) for s in range(2)])
    optimizer = make_optimizer(net.parameters(), "sgd", 0.1, weight_decay=5e-4, momentum=0.9)
    cbp = _cbp(net, fidelity, optimizer, maturity_threshold=1)
    for step in range(2):  # a momentum buffer exists after the first step; units mature after it
        logits, features = net(torch.randn(2, 4, 3, 32, 32))
        optimizer.zero_grad()
        logits.sum().backward()
        optimizer.step()
        with torch.no_grad():
            for module in net.modules():  # BN state that a reset must visibly restore
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.add_(0.5)
                    module.running_var.add_(2.0)
        if step == 1:
            for state in cbp.state:
                state["age"][1] = 0  # seed 1: every unit young (ages 1 ≤ maturity after this step)
        before = {name: view.of().clone() for name, view in net.seed_state_views().items()}
        momentum_before = {p: optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()}
        downsample = net.resnet.layer2[0].downsample[0].weight.detach().clone()
        cbp.after_step([h.detach() for h in features])
    assert cbp.replaced_total[1] == 0 and cbp.replaced_total[0] > 0
    group = net.unit_groups()[6]  # layer2[0].conv2 → layer2[1].conv1 (the downsample sits beside)
    incoming, norm = group.incoming.of()[0], {e.view.tensor: e.view.of()[0] for e in group.norm}
    bn = net.resnet.layer2[0].bn2
    units = torch.nonzero(cbp.state[6]["age"][0] == 0).reshape(-1)  # replaced in the last step
    assert len(units) == 4  # ρ = 0.25 of 16 units, all mature (original: of the width)
    # the previous layer's replaced units zeroed their columns of this layer's incoming weights
    kept_columns = torch.nonzero(cbp.state[5]["age"][0] > 0).reshape(-1)
    old = before["resnet.layer2.0.conv2.weight"][0][:, kept_columns]
    new = incoming[:, kept_columns]
    assert not torch.equal(new[units], old[units])  # new filters drawn
    assert torch.all(group.incoming_bias.of()[0][units] == 0)
    assert torch.all(norm[bn.weight][units] == 1) and torch.all(norm[bn.bias][units] == 0)
    assert torch.all(norm[bn.running_mean][units] == 0) and torch.all(norm[bn.running_var][units] == 1)
    # outgoing columns zeroed, except in the next layer's own replaced filters (drawn afresh after)
    next_kept = torch.nonzero(cbp.state[7]["age"][0] > 0).reshape(-1)
    outgoing = group.outgoing.of()[0]
    assert len(next_kept) == 12 and torch.all(outgoing[next_kept][:, units] == 0)
    others = torch.ones(group.width, dtype=torch.bool)
    others[units] = False
    assert torch.equal(new[others], old[others])
    assert torch.all(norm[bn.weight][others] == before["resnet.layer2.0.bn2.weight"][0][others])
    assert torch.equal(net.resnet.layer2[0].downsample[0].weight, downsample)  # never replaced nor zeroed
    momentum = group.incoming.of(optimizer.state[group.incoming.tensor]["momentum_buffer"])[0][units]
    assert bool((momentum == 0).all()) == (fidelity == "corrected")  # original: stale momentum kept
    if fidelity == "original":
        state = cbp.state[6]
        assert torch.all(state["activation_sum"][0][units] > 0)  # the cumulative sum is never reset
    # seed 1: every parameter, BN statistic and momentum entry as before the step
    for name, view in net.seed_state_views().items():
        assert torch.equal(view.of()[1], before[name][1]), name
    for param, saved in momentum_before.items():
        view = next(v for v in net.parameter_views() if v.tensor is param)
        assert torch.equal(view.of(optimizer.state[param]["momentum_buffer"])[1], view.of(saved)[1])


def test_cifar_original_draws_new_filters_kaiming_normal():
    conv, nxt = nn.Conv2d(64, 400, 3), nn.Conv2d(400, 8, 3)
    group = UnitGroup.of_modules("c", conv, nxt, "relu", nn.BatchNorm2d(400))
    optimizer = make_optimizer(list(conv.parameters()) + list(nxt.parameters()), "sgd", 0.1)
    for distribution in ("normal", "uniform"):
        config = CBPConfig(1.0, 0, util_type="weight", accumulate=True, init_distribution=distribution)
        cbp = ContinualBackprop([group], optimizer, config, [torch.Generator().manual_seed(0)])
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
        optimizer="upgd" if algorithm == "upgd" else "sgd",
        upgd=UPGDConfig(sigma=0.01) if algorithm == "upgd" else None,
        step_size=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        perturb_scale=1e-5 if algorithm == "snp" else 0.0,
        l2_init=0.5 if algorithm == "l2_init" else 0.0,
        cbp=cbp,
        # every 5 steps (2 epochs of 12 images: 4 resets), the last 3 weight layers with their norms
        method={
            "layer_reset": LayerResetConfig(reset_period=5, layers=3),
            "parseval": ParsevalConfig(parseval_strength=0.01),
            "snr": SNRConfig(rejection_percentile=0.9, init="kaiming"),
            "plasticity_injection": InjectionConfig(injection_period=3),
            "redo": ReDoConfig(threshold=0.9, reset_period=2, init="kaiming"),  # BN evens the units out
        }.get(algorithm),
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


def _seed_slices(experiment: IncrementalCifarExperiment, seed: int) -> dict[str, torch.Tensor]:
    return {name: view.of()[seed].clone() for name, view in experiment.state_views.items()}


def test_early_stopping_restores_each_seeds_strictly_best_validation_epoch(splits, monkeypatch):
    """Two seeds with their best epochs at different epochs: each seed's slice of the network
    (parameters and BN statistics) goes back to its own best epoch; momentum is kept, as the
    single-seed run keeps it."""
    experiment = IncrementalCifarExperiment(_tiny(epochs_per_block=4), [0, 1], *splits)
    # seed 0: epoch 2 is best, epoch 3 only ties it; seed 1: epoch 4 is best
    scripted = iter([[0.25, 0.25], [0.5, 0.25], [0.5, 0.25], [0.25, 0.75]])
    states, momenta = [], []
    evaluate = experiment._evaluate

    def scripted_evaluate(parts, batch_size, streams):
        losses, accuracies = evaluate(parts, batch_size, streams)
        if streams is None:  # validation
            states.append([_seed_slices(experiment, s) for s in range(2)])
            optimizer = experiment.learner.optimizer
            momenta.append(
                {p: optimizer.state[p]["momentum_buffer"].clone() for p in experiment.net.parameters()}
            )
            return losses, next(scripted)
        return losses, accuracies

    monkeypatch.setattr(experiment, "_evaluate", scripted_evaluate)
    rows = [experiment.run_step() for _ in range(4)]
    assert [[r["classes"] for r in row] for row in rows] == [[4, 4]] * 4 and experiment.num_seen == 8
    for seed, best_epoch in ((0, 1), (1, 3)):
        restored = _seed_slices(experiment, seed)
        for key, value in states[best_epoch][seed].items():
            assert torch.equal(restored[key], value), (seed, key)
        other = 3 if best_epoch == 1 else 1
        assert not all(torch.equal(restored[k], v) for k, v in states[other][seed].items())
    optimizer = experiment.learner.optimizer
    for param, saved in momenta[-1].items():
        assert torch.equal(optimizer.state[param]["momentum_buffer"], saved)
    assert [row["block_validation_accuracy"] for row in rows[-1]] == [0.5, 0.75]
    for s in range(2):
        assert rows[-1][s]["block_test_accuracy"] == max(r[s]["test_accuracy"] for r in rows)


# --- tiny runs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["bp", "head_reset", "retrained_network", "snp", "cbp"])
def test_a_tiny_run_trains_adds_classes_and_measures_at_block_ends(splits, algorithm):
    experiment = IncrementalCifarExperiment(_tiny(algorithm), [0], *splits)
    initial = copy.deepcopy(experiment.net.state_dict())
    rows = [experiment.run_step()[0] for _ in range(4)]
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
    orders = {
        a: IncrementalCifarExperiment(_tiny(a), [0], *splits).splits[0].order.tolist() for a in ("bp", "cbp")
    }
    assert orders["bp"] == orders["cbp"]
    batch = IncrementalCifarExperiment(_tiny("bp"), [1, 0], *splits)
    assert batch.splits[1].order.tolist() == orders["bp"] != batch.splits[0].order.tolist()


BATCHED = [("bp", "original"), ("head_reset", "corrected"), ("retrained_network", "original")]
BATCHED += [("snp", "original"), ("cbp", "original"), ("cbp", "corrected"), ("l2_init", "original")]
BATCHED += [
    ("layer_reset", "corrected"),
    ("parseval", "corrected"),
    ("upgd", "corrected"),
    ("snr", "corrected"),
    ("plasticity_injection", "corrected"),
    ("redo", "corrected"),
]


@pytest.mark.parametrize("algorithm, fidelity", BATCHED)
def test_each_seed_of_a_batch_runs_exactly_as_it_runs_alone(splits, algorithm, fidelity, monkeypatch):
    """Seeds 2, 0 in one network: over two blocks (class increment, reset, CBP replacements) each
    seed's metrics and final network equal its run alone (S = 1), bit for bit, with PyTorch's
    native CPU kernels: they compute a grouped conv group by group and batch norm channel by
    channel, so nothing depends on the other seeds. (oneDNN's, the CPU default, do not: see the
    next test.)"""
    config = _tiny(algorithm, fidelity)
    seeds = [2, 0]
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    batch = IncrementalCifarExperiment(config, seeds, *splits)
    rows = [batch.run_step() for _ in range(4)]
    for s, seed in enumerate(seeds):
        alone = IncrementalCifarExperiment(config, [seed], *splits)
        assert [row[s] for row in rows] == [alone.run_step()[0] for _ in range(4)], seed
        for name, view in alone.state_views.items():
            assert torch.equal(batch.state_views[name].of()[s], view.of()[0]), (seed, name)
    if algorithm in ("cbp", "layer_reset", "redo"):
        assert all(rows[-1][s]["replaced_units"] > 0 for s in range(2))


def test_with_onednn_kernels_a_batched_seed_agrees_with_it_alone_to_rounding(splits):
    """With oneDNN (PyTorch's default CPU convolutions) a grouped conv sums in another order than
    S separate ones: over the first block (two epochs, width 4) the losses and ranks of a batched
    seed were measured within 4e-7 relative of the seed alone, accuracies equal. Training amplifies
    such differences as any rounding (measured 1e-2 relative by the fourth epoch, after a head
    reset), so only the first block is compared, at 1e-5."""
    config = _tiny("bp")
    batch = IncrementalCifarExperiment(config, [0, 1, 2], *splits)
    rows = [batch.run_step() for _ in range(2)]
    for seed in range(3):
        alone = IncrementalCifarExperiment(config, [seed], *splits)
        for row, expected in zip(rows, [alone.run_step()[0] for _ in range(2)], strict=True):
            assert row[seed].keys() == expected.keys()
            for key, value in expected.items():
                exact = "accuracy" in key or key in ("epochs", "classes", "step_size")
                assert row[seed][key] == (value if exact else pytest.approx(value, rel=1e-5)), key


@pytest.mark.parametrize(
    "algorithm, fidelity",
    [
        ("cbp", "original"),
        ("cbp", "corrected"),
        ("retrained_network", "original"),
        ("snp", "original"),
        ("layer_reset", "corrected"),
        ("upgd", "corrected"),
    ],
)
def test_resumed_between_epochs_it_continues_bit_identically(splits, algorithm, fidelity):
    config = _tiny(algorithm, fidelity)
    seeds = [0, 1]
    straight = IncrementalCifarExperiment(config, seeds, *splits)
    expected = [straight.run_step() for _ in range(3)]

    first = IncrementalCifarExperiment(config, seeds, *splits)
    first.run_step()  # mid-block: the early-stopping candidates are part of the state
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    del first
    resumed = IncrementalCifarExperiment(config, seeds, *splits)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    rows = [resumed.run_step() for _ in range(2)]  # the block end, then the next block's first epoch
    assert rows == expected[1:]
    for key, value in straight.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[key], value), key
    with pytest.raises(ValueError, match="seeds"):
        IncrementalCifarExperiment(config, [1, 0], *splits).load_state_dict(straight.state_dict())


def test_several_seeds_need_equally_many_images_per_class(splits):
    train, test = splits
    uneven = ImageDataset(train.images[1:], train.labels[1:], train.pixel_max, train.num_classes)
    with pytest.raises(ValueError, match="same number in every class"):
        IncrementalCifarExperiment(_tiny(), [0, 1], uneven, test)
    IncrementalCifarExperiment(_tiny(), [0], uneven, test).run_step()  # one seed: any counts


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
seeds: [0, 1]
seeds_per_trial: 2
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


def test_a_cifar_layer_reset_keeps_its_own_options_and_the_layers_are_checked(tmp_path, prepared):
    path = tmp_path / "s.yaml"
    text = TINY_SWEEP.format(name="s", data=prepared, fidelity="corrected", storage=tmp_path)
    reset = "  - algorithm: layer_reset\n    step_size: 0.05\n    reset_period: 7\n    layers: {layers}\n"
    path.write_text(text.replace("resources:", reset.format(layers=2) + "resources:"))
    trial = next(t for t in load_sweep(path).trials if t["algorithm"] == "layer_reset")
    config = config_from_trial(trial)
    assert config.learner.method == LayerResetConfig(reset_period=7, layers=2, reset_optimizer_state=True)
    path.write_text(text.replace("resources:", reset.format(layers=22) + "resources:"))
    with pytest.raises(SweepError) as error:
        load_sweep(path)
    assert "algorithms[2].layers" in str(error.value) and "21 weight layers" in str(error.value)


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
    assert [len(group) for group in sweep.groups] == [2, 2]  # bp and cbp, each two seeds in one trial
    outcome = run_sweep(sweep, quiet=True)
    assert outcome.errors == 0
    client, parents, children = mlflow_runs(outcome.tracking_uri, sweep.name)
    assert len(children) == 4  # one MLflow run per seed
    train, test = load_dataset("cifar100", prepared, "train"), load_dataset("cifar100", prepared, "test")
    by_name = {r.info.run_name: r for r in children}
    for group in sweep.groups:
        seeds = [trial["seed"] for trial in group]
        experiment = IncrementalCifarExperiment(config_from_trial(group[0]), seeds, train, test)
        expected = [experiment.run_step() for _ in range(2)]
        for s, trial in enumerate(group):
            run = by_name[trial_run_name(trial)]
            for key in ("test_accuracy", "train_loss", "block_test_accuracy", "dormant_units_percent_seen"):
                history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
                reference = [row[s][key] for row in expected if key in row[s]]
                assert [m.value for m in history] == reference, (trial["label"], trial["seed"], key)
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
        # four seeds per Tune trial, one seed-axis ResNet-18 on one GPU: 7 trials of 4 and one of 2
        assert sweep.seeds_per_trial == 4 and [len(g) for g in sweep.groups] == [4] * 7 + [2]
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


def test_once_every_class_is_in_each_classs_test_accuracy_is_logged(splits, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # batched = alone, exactly
    experiment = IncrementalCifarExperiment(_tiny(classes_per_block=5, epochs_per_block=1), [0, 1], *splits)
    rows = [experiment.run_step() for _ in range(2)]
    for seed in range(2):
        assert not any(k.startswith("test_accuracy_class") for k in rows[0][seed])
        per_class = [rows[1][seed][f"test_accuracy_class{j:03d}"] for j in range(NUM_CLASSES)]
        assert all(v in (0.0, 0.5, 1.0) for v in per_class)  # two test images per class
        assert "dormant_units_percent" not in rows[1][seed] and "stable_rank_seen" in rows[1][seed]
    alone = IncrementalCifarExperiment(_tiny(classes_per_block=5, epochs_per_block=1), [1], *splits)
    per_class = {k: v for k, v in rows[1][1].items() if k.startswith("test_accuracy_class")}
    assert per_class == {
        k: v for k, v in [alone.run_step(), alone.run_step()][1][0].items() if k in per_class
    }
