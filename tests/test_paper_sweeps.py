"""The sweep files shipped in sweeps/: every one validates, and the regression files are the paper's
(spec/problems.md §1): 100 runs, 1M examples (3M for flip_one), the stated grids, `fidelity: original`,
CBP's maturity stated explicitly. Only validation here: nothing runs, Ray is not imported."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from lop_ray import cli
from lop_ray.data.shards import prepare_dataset
from lop_ray.schema import Sweep, load_sweep
from tests.cifar_files import write_cifar100
from tests.imagenet32_files import write_class_files
from tests.mnist_files import write_mnist

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
REGRESSION = SWEEPS / "regression"
PERMUTED = SWEEPS / "permuted_mnist"

ALL_FILES = sorted(p for p in SWEEPS.rglob("*") if p.suffix in (".yaml", ".yml"))
REGRESSION_FILES = sorted(p for p in ALL_FILES if REGRESSION in p.parents)

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "leaky_relu", "swish")
BP_STEPS = {0.01, 0.003, 0.001}
WD_TO_1E_1 = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}
WD_TO_1E0 = WD_TO_1E_1 | {1.0}
L2_GRID = {a: WD_TO_1E0 if a in ("relu", "leaky_relu", "swish") else WD_TO_1E_1 for a in ACTIVATIONS}
SIGMAS = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1}
SNP_LAMBDA = {
    "sgd": {"relu": 1e-2, "leaky_relu": 1e-2, "swish": 1e-2, "tanh": 1e-2, "sigmoid": 1e-3, "elu": 1e-3},
    "adam": {"relu": 1e-2, "elu": 1e-4, "leaky_relu": 1e-3, "sigmoid": 1e-3, "swish": 1e-3, "tanh": 1e-3},
}

# file (relative to sweeps/regression) -> (optimizer, activation or None for linear, bit_change, examples)
EXPECTED_FILES: dict[str, tuple[str, str | None, str, int]] = {
    **{
        f"{opt}/{a}{kind}.yaml": (opt, a, "redraw", 10**6)
        for opt in ("sgd", "adam")
        for a in ACTIVATIONS
        for kind in ("", "_wd", "_snp")
    },
    "sgd/linear.yaml": ("sgd", None, "redraw", 10**6),
    "adam/linear.yaml": ("adam", None, "redraw", 10**6),
    "sgd/cbp_relu.yaml": ("sgd", "relu", "redraw", 10**6),
    **{f"flip_one/{a}.yaml": ("sgd", a, "flip_one", 3 * 10**6) for a in ACTIVATIONS},
    "flip_one/linear.yaml": ("sgd", None, "flip_one", 3 * 10**6),
}


def _rel(path: Path) -> str:
    return path.relative_to(REGRESSION).as_posix()


@pytest.fixture(scope="module", autouse=True)
def submit_directory(tmp_path_factory):
    """Where a user submits from: permuted MNIST files name `data/mnist`, continual ImageNet files
    `data/imagenet32`, CIFAR files `data/cifar100`, prepared there (here: tiny)."""
    root = tmp_path_factory.mktemp("submit")
    prepare_dataset("mnist", write_mnist(root / "raw"), root / "data" / "mnist")
    write_class_files(root / "raw_imagenet32", classes=2)  # sweeps/imagenet/ name data/imagenet32
    prepare_dataset("imagenet32", root / "raw_imagenet32", root / "data" / "imagenet32")
    prepare_dataset("cifar100", write_cifar100(root / "raw_cifar", 100, 1, 1), root / "data" / "cifar100")
    before = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(before)


@functools.cache
def _load(path: Path) -> Sweep:
    return load_sweep(path)


@pytest.fixture(scope="module")
def loaded() -> dict[str, Sweep]:
    return {_rel(p): _load(p) for p in REGRESSION_FILES}


def test_there_are_sweep_files():
    assert ALL_FILES, "no sweep files under sweeps/"
    assert {_rel(p) for p in REGRESSION_FILES} == set(EXPECTED_FILES)


@pytest.mark.parametrize("path", ALL_FILES, ids=[p.relative_to(SWEEPS).as_posix() for p in ALL_FILES])
def test_every_sweep_file_validates(path: Path):
    sweep = _load(path)
    assert sweep.trials and sweep.steps_per_trial > 0


def test_sweep_names_are_unique():
    """Results land in <storage>/<name>: two files with one name would mix their results."""
    names = [_load(p).name for p in ALL_FILES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("rel", sorted(EXPECTED_FILES))
def test_regression_file_runs_at_the_papers_scale(rel: str, loaded):
    optimizer, activation, bit_change, examples = EXPECTED_FILES[rel]
    sweep = loaded[rel]
    document = sweep.document
    assert document["fidelity"] == "original"
    assert document["resources"] == {"cpu": 1, "gpu": 0}
    assert document["storage"] == "./results" == sweep.storage
    assert document["description"].strip()
    assert sweep.problem == "slowly_changing_regression"

    seeds = sorted({t["seed"] for t in sweep.trials})
    assert seeds == list(range(100)), "100 runs, seeds 0-99 (the same streams in every file)"
    for trial in sweep.trials:
        settings = trial["problem_settings"]
        assert settings["flip_after"] == 10_000
        assert trial["num_tasks"] * settings["flip_after"] == examples
        assert settings["bit_change"] == bit_change
        assert (settings["num_inputs"], settings["num_slow_bits"]) == (20, 15)
        assert (settings["target_hidden_units"], settings["threshold_beta"]) == (100, 0.7)
        assert trial["fidelity"] == "original"
        if activation is None:
            assert trial["network"]["hidden_units"] == 0
        else:
            assert trial["network"] == {
                "activation": activation,
                "hidden_units": 5,
                "layer_norm": False,
                "crelu": False,
            }
        hyper = trial["hyperparameters"]
        assert hyper["optimizer"] == optimizer
        if optimizer == "adam":
            assert (hyper["beta1"], hyper["beta2"]) == (0.9, 0.999)
        else:
            assert hyper["momentum"] == 0
    # every grid point is run on every seed
    points = {repr(sorted(t["hyperparameters"].items())) for t in sweep.trials}
    assert len(sweep.trials) == 100 * len(points)
    # and its 100 seeds are two Tune trials of 50 (an even count: no core idles at the file's end),
    # each one seed-batched learner on one CPU
    assert document["seeds_per_trial"] == 50 == sweep.seeds_per_trial
    assert all(t["seeds_per_trial"] == 50 for t in sweep.trials)
    assert [len(group) for group in sweep.groups] == [50] * 2 * len(points)
    assert sorted(t["seed"] for group in sweep.groups for t in group) == sorted(
        list(range(100)) * len(points)
    )
    assert all(len({t["seed"] for t in group}) == 50 for group in sweep.groups)


def _grid(sweep: Sweep, key: str) -> set:
    return {t["hyperparameters"][key] for t in sweep.trials}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_regression_grids_follow_the_spec(activation: str, loaded):
    for optimizer in ("sgd", "adam"):
        bp = loaded[f"{optimizer}/{activation}.yaml"]
        assert {t["algorithm"] for t in bp.trials} == {"bp"}
        assert _grid(bp, "step_size") == BP_STEPS

        l2 = loaded[f"{optimizer}/{activation}_wd.yaml"]
        assert {t["algorithm"] for t in l2.trials} == {"l2"}
        assert _grid(l2, "step_size") == {0.01}
        assert _grid(l2, "weight_decay") == L2_GRID[activation]

        snp = loaded[f"{optimizer}/{activation}_snp.yaml"]
        assert {t["algorithm"] for t in snp.trials} == {"snp"}
        assert _grid(snp, "step_size") == {0.01}
        assert _grid(snp, "weight_decay") == {SNP_LAMBDA[optimizer][activation]}
        assert _grid(snp, "perturb_scale") == SIGMAS

    flip = loaded[f"flip_one/{activation}.yaml"]
    assert {t["algorithm"] for t in flip.trials} == {"bp"}
    assert _grid(flip, "step_size") == BP_STEPS


def test_linear_learners(loaded):
    assert _grid(loaded["sgd/linear.yaml"], "step_size") == {0.01}
    assert _grid(loaded["adam/linear.yaml"], "step_size") == {0.01}
    assert _grid(loaded["flip_one/linear.yaml"], "step_size") == {0.03, 0.01, 0.003, 0.001, 0.0003}


def test_cbp_is_the_original_configuration(loaded):
    sweep = loaded["sgd/cbp_relu.yaml"]
    [entry] = sweep.document["algorithms"]
    assert entry["algorithm"] == "cbp"
    # the maturity is stated in the file, both values: the original ran with 10, its config says 100
    assert "maturity_threshold" in entry and entry["maturity_threshold"] == [10, 100]
    # the fidelity options are stated too, not left to the `fidelity:` switch
    assert entry["bias_correction"] is False and entry["reset_optimizer_state"] is False
    assert {t["algorithm"] for t in sweep.trials} == {"cbp"}
    assert _grid(sweep, "replacement_rate") == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2}
    assert _grid(sweep, "maturity_threshold") == {10, 100}
    for key, value in {
        "step_size": 0.01,
        "weight_decay": 0.0,
        "decay_rate": 0.99,
        "util_type": "adaptable_contribution",
        "accumulate": False,
        "init": "kaiming",
        "replacement_base": "eligible",
        "bias_correction": False,
        "reset_optimizer_state": False,
    }.items():
        assert _grid(sweep, key) == {value}, key
    assert len(sweep.trials) == 100 * 5 * 2


PERMUTED_FILES = {
    # file: (algorithm, grid key, grid, hidden widths, tasks, examples per task)
    "bp.yaml": ("bp", "step_size", {0.01, 0.003, 0.001}, {2000}, 800, None),
    "bp_small_net.yaml": ("bp", "step_size", {0.003}, {100}, 800, None),
    "bp_width.yaml": ("bp", "step_size", {0.003}, {100, 1000, 10000}, 150, None),
    "bp_rate_10000.yaml": ("bp", "step_size", {0.003}, {2000}, 4800, 10_000),
    "bp_rate_100000.yaml": ("bp", "step_size", {0.003}, {2000}, 480, 100_000),
    "bp_rate_1000000.yaml": ("bp", "step_size", {0.003}, {2000}, 48, 1_000_000),
    "adam.yaml": ("bp", "step_size", {1e-4, 3e-5, 5e-5}, {2000}, 800, None),
    "l2.yaml": ("l2", "weight_decay", {1e-3, 1e-4, 1e-5}, {2000}, 800, None),
    "snp.yaml": ("snp", "perturb_scale", {1e-4, 1e-5, 1e-6}, {2000}, 800, None),
    "cbp.yaml": ("cbp", "replacement_rate", {1e-4, 1e-5, 1e-6}, {2000}, 800, None),
    "dropout.yaml": ("bp", "step_size", {0.003}, {2000}, 800, None),
    "online_norm.yaml": ("bp", "step_size", {0.003}, {2000}, 800, None),
}


@pytest.mark.parametrize("name", sorted(PERMUTED_FILES))
def test_permuted_mnist_files_follow_the_spec(name: str, submit_directory):
    assert {p.name for p in PERMUTED.glob("*.yaml")} == set(PERMUTED_FILES)
    algorithm, key, grid, widths, tasks, per_task = PERMUTED_FILES[name]
    sweep = _load(PERMUTED / name)
    assert sweep.problem == "permuted_mnist" and sweep.document["fidelity"] == "original"
    assert {t["algorithm"] for t in sweep.trials} == {algorithm}
    assert _grid(sweep, key) == grid
    assert {t["network"]["hidden_units"] for t in sweep.trials} == widths
    if name == "dropout.yaml":
        assert {t["network"]["dropout"] for t in sweep.trials} == {0.1, 0.03}
    seeds = {t["seed"] for t in sweep.trials}
    assert seeds == ({0} if name == "bp_small_net.yaml" else set(range(30)))
    # seeds per Tune trial: 10-30 dividing the seeds (every Tune trial full); a 1-seed file runs its one
    per_trial = sweep.document["seeds_per_trial"]
    assert per_trial == sweep.seeds_per_trial
    if len(seeds) >= 10:
        assert 10 <= per_trial <= 30 and len(seeds) % per_trial == 0, per_trial
    else:
        assert per_trial == len(seeds)
    assert {len(group) for group in sweep.groups} == {per_trial}
    assert len(sweep.groups) == len(sweep.trials) // per_trial
    for trial in sweep.trials:
        settings = trial["problem_settings"]
        assert settings["data"] == str(submit_directory / "data" / "mnist")  # absolute for the workers
        assert settings["examples_per_task"] == per_task and settings["probe_examples"] == 2000
        assert trial["num_tasks"] == tasks == trial["num_steps"]
        assert trial["network"]["hidden_layers"] == 3 and trial["network"]["activation"] == "relu"
        assert trial["network"]["online_norm"] == (name == "online_norm.yaml")
        assert trial["network"]["dropout"] in ({0.1, 0.03} if name == "dropout.yaml" else {0.0})
        hyper = trial["hyperparameters"]
        assert hyper["optimizer"] == ("adam" if name == "adam.yaml" else "sgd")
        if algorithm in ("l2", "snp", "cbp"):
            assert hyper["step_size"] == 0.003
        if algorithm == "snp":
            assert hyper["weight_decay"] == 1e-4
        if algorithm == "cbp":
            assert (hyper["maturity_threshold"], hyper["decay_rate"], hyper["accumulate"]) == (
                100,
                0.99,
                True,
            )
            assert hyper["util_type"] == "adaptable_contribution"
            assert hyper["bias_correction"] is False and hyper["reset_optimizer_state"] is False
    assert 0 < sweep.document["resources"]["gpu"] <= 1 and sweep.document["resources"]["cpu"] == 1


def _check(path: Path, capsys) -> str:
    """What `lop-ray sweep PATH --check` prints (it validates only: Ray is not imported)."""
    code = cli.main(["sweep", str(path), "--check"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return out.strip()


@pytest.mark.parametrize(
    "rel, count",
    [
        ("regression/sgd/relu.yaml", "300 trials × 100 steps in 6 Tune trials × 50 seeds"),
        ("regression/sgd/linear.yaml", "100 trials × 100 steps in 2 Tune trials × 50 seeds"),
        ("regression/sgd/cbp_relu.yaml", "1000 trials × 100 steps in 20 Tune trials × 50 seeds"),
        ("permuted_mnist/bp.yaml", "90 trials × 800 steps in 3 Tune trials × 30 seeds"),
        ("permuted_mnist/bp_width.yaml", "90 trials × 150 steps in 9 Tune trials × 10 seeds"),
        ("permuted_mnist/bp_small_net.yaml", "1 trial × 800 steps"),
    ],
)
def test_check_counts_tune_trials_and_their_seeds(rel: str, count: str, capsys):
    path = SWEEPS / rel
    assert _check(path, capsys) == f"{path}: valid; {count}"


@pytest.mark.parametrize(
    "edit, count",
    [
        # a short last Tune trial per grid point: 120 seeds in groups of 50
        (("count: 100}", "count: 120}"), "360 trials × 100 steps in 9 Tune trials: 6 × 50 seeds + 3 × 20"),
        # one seed per Tune trial: the count as it always was
        (("seeds_per_trial: 50", "seeds_per_trial: 1"), "300 trials × 100 steps"),
    ],
    ids=["short-last-trial", "one-seed-per-trial"],
)
def test_check_count_of_an_edited_regression_file(edit: tuple[str, str], count: str, tmp_path, capsys):
    text = (REGRESSION / "sgd" / "relu.yaml").read_text()
    assert edit[0] in text
    path = tmp_path / "relu.yaml"
    path.write_text(text.replace(*edit))
    assert _check(path, capsys) == f"{path}: valid; {count}"
