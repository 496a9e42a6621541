"""The method-comparison sweeps (sweeps/methods/): every method of each file runs, as the file
configures it (only the network and the data shrunk), two seeds in one network, and logs finite
metrics, the plasticity metrics among them."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from lop_ray.data.shards import load_dataset, prepare_dataset
from lop_ray.experiments import continual_imagenet, permuted_mnist, regression
from lop_ray.schema import load_sweep
from tests.cifar_files import write_cifar100
from tests.imagenet32_files import write_class_files
from tests.mnist_files import write_mnist

METHODS = Path(__file__).resolve().parents[1] / "sweeps" / "methods"
PLASTICITY = {"gradient_norm", "distance_from_init", "active_fraction", "feature_churn"}
EVERY_METHOD = {
    "bp",
    "l2",
    "l2_init",
    "snp",
    "cbp",
    "redo",
    "layer_reset",
    "parseval",
    "upgd",
    "snr",
    "plasticity_injection",
}


@pytest.fixture(scope="module")
def submit_directory(tmp_path_factory):
    """Where a user submits from, with the data the files name prepared (tiny)."""
    root = tmp_path_factory.mktemp("submit")
    prepare_dataset("mnist", write_mnist(root / "raw", train=40, test=10), root / "data" / "mnist")
    write_class_files(root / "raw_imagenet32", classes=4)
    prepare_dataset("imagenet32", root / "raw_imagenet32", root / "data" / "imagenet32")
    write_cifar100(root / "raw_cifar", num_classes=100, train_per_class=3, test_per_class=1)
    prepare_dataset("cifar100", root / "raw_cifar", root / "data" / "cifar100")
    return root


def _one_trial_per_algorithm(path: Path, root: Path, monkeypatch) -> dict[str, dict]:
    monkeypatch.chdir(root)
    return _first_trials(path)


def _first_trials(path: Path) -> dict[str, dict]:
    """Each label's first trial; a method that acts once half-way through the run (plasticity
    injection) acts after two steps instead, so that the shrunk run goes through it."""
    trials = {}
    for trial in load_sweep(path).trials:
        trials.setdefault(trial["label"], copy.deepcopy(trial))
    for trial in trials.values():
        if "injection_period" in trial["hyperparameters"]:
            trial["hyperparameters"]["injection_period"] = 2
    return trials


def _finite_with_plasticity(rows: list[dict[str, float]], name: str) -> None:
    for row in rows:
        assert PLASTICITY <= row.keys(), name
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, (name, bad)


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("regression", EVERY_METHOD),
        ("regression_layer_norm", {"layer_norm", "layer_norm_wd"}),
        ("regression_crelu", {"crelu", "crelu_wd"}),
    ],
)
def test_every_method_of_the_regression_files_runs(name, labels, submit_directory, monkeypatch):
    trials = _one_trial_per_algorithm(METHODS / f"{name}.yaml", submit_directory, monkeypatch)
    assert set(trials) == labels
    for name, trial in trials.items():
        trial["problem_settings"].update(flip_after=300, examples_per_step=600)
        config = regression.config_from_trial(trial)
        rows = regression.RegressionExperiment(config, seeds=[0, 1]).run_step()
        _finite_with_plasticity(rows, name)


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("permuted_mnist", EVERY_METHOD),
        ("permuted_mnist_layer_norm", {"layer_norm", "layer_norm_wd"}),
        ("permuted_mnist_crelu", {"crelu", "crelu_wd"}),
    ],
)
def test_every_method_of_the_permuted_mnist_files_runs(name, labels, submit_directory, monkeypatch):
    trials = _one_trial_per_algorithm(METHODS / f"{name}.yaml", submit_directory, monkeypatch)
    assert set(trials) == labels
    data = load_dataset("mnist", submit_directory / "data" / "mnist", "train")
    for name, trial in trials.items():
        trial["network"]["hidden_units"] = 16
        trial["problem_settings"]["probe_examples"] = 20
        config = permuted_mnist.config_from_trial(trial)
        rows = permuted_mnist.PermutedMNISTExperiment(config, data, seeds=[0, 1]).run_step()
        _finite_with_plasticity(rows, name)


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("imagenet", EVERY_METHOD),
        ("imagenet_layer_norm", {"layer_norm", "layer_norm_wd"}),
        ("imagenet_crelu", {"crelu", "crelu_wd"}),
    ],
)
def test_every_method_of_the_imagenet_files_runs(name, labels, submit_directory, monkeypatch):
    trials = _one_trial_per_algorithm(METHODS / f"{name}.yaml", submit_directory, monkeypatch)
    assert set(trials) == labels
    root = str(submit_directory / "data" / "imagenet32")
    train, test = load_dataset("imagenet32", root, "train"), load_dataset("imagenet32", root, "test")
    torch.manual_seed(0)
    for name, trial in trials.items():
        # mini-batches of 12: at 6, backprop itself spikes on these random images (seed 1, task 0)
        trial["problem_settings"].update(epochs_per_task=2, batch_size=12, train_images_per_class=12)
        config = continual_imagenet.config_from_trial(trial)
        experiment = continual_imagenet.ContinualImageNetExperiment(config, [0, 1], train, test)
        _finite_with_plasticity(experiment.run_step() + experiment.run_step(), name)


def test_every_method_of_the_cifar_file_runs(submit_directory, monkeypatch, one_torch_thread):
    """sweeps/methods/cifar.yaml, shrunk: ResNet-18 of base width 4, blocks of 2 classes of 2
    training images, one epoch each; two blocks, so that the class increment's resets run too."""
    from lop_ray.experiments import incremental_cifar

    trials = _one_trial_per_algorithm(METHODS / "cifar.yaml", submit_directory, monkeypatch)
    assert set(trials) == (EVERY_METHOD - {"l2"}) | {"retrained_network"}
    root = str(submit_directory / "data" / "cifar100")
    train, test = load_dataset("cifar100", root, "train"), load_dataset("cifar100", root, "test")
    for name, trial in trials.items():
        trial["network"]["width"] = 4
        trial["problem_settings"].update(
            classes_per_block=2, epochs_per_block=1, validation_per_class=1, probe_examples=4
        )
        config = incremental_cifar.config_from_trial(trial)
        experiment = incremental_cifar.IncrementalCifarExperiment(config, [0, 1], train, test)
        _finite_with_plasticity(experiment.run_step() + experiment.run_step(), name)


RL_METHODS = {"ns", "l2", "l2_init", "cbp", "redo", "layer_reset", "parseval", "snr", "plasticity_injection"}


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("rl_ant", RL_METHODS),
        ("rl_ant_layer_norm", {"layer_norm", "layer_norm_wd"}),
        ("rl_ant_crelu", {"crelu", "crelu_wd"}),
    ],
)
def test_every_method_of_the_rl_files_runs(name, labels):
    """sweeps/methods/rl_ant*.yaml, each method on both PPO nets, shrunk: 16-unit nets, one 256-step
    iteration of 1 epoch in this process."""
    from lop_ray.experiments import ppo

    trials = _first_trials(METHODS / f"{name}.yaml")
    assert set(trials) == labels
    torch.set_num_threads(1)
    for name, trial in trials.items():
        trial["problem_settings"].update(
            batch_size=256,
            minibatch_size=64,
            epochs=1,
            iterations_per_step=1,
            max_episode_steps=50,
            env_runners=0,
        )
        trial["network"]["hidden_units"] = 16
        experiment = ppo.PPOExperiment(ppo.config_from_trial(trial), seeds=[0, 1])
        rows = experiment.run_step()
        experiment.close()
        for row in rows:
            assert PLASTICITY <= row.keys(), name
            # an iteration may end no episode: its return is NaN by design; every other metric is finite
            bad = {
                k: v
                for k, v in row.items()
                if not math.isfinite(v) and k not in ("episodic_return", "episode_length")
            }
            assert not bad, (name, bad)
