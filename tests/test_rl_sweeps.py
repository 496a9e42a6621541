"""The RL sweep schema (bad settings rejected before Ray starts, naming the key) and the RL sweep
files: the paper's configs (spec/problems.md §5) at the paper's scale, and a quickstart."""

from __future__ import annotations

from pathlib import Path

import pytest

from lop_ray.experiments.ppo import config_from_trial
from lop_ray.schema import SweepError, load_sweep, validate_sweep

ROOT = Path(__file__).resolve().parents[1]
RL_SWEEPS = ROOT / "sweeps" / "rl"


def _document(**problem) -> dict:
    return {
        "name": "rl_check",
        "problem": {"name": "rl", "env": "Hopper-v5", **problem},
        "algorithms": [{"algorithm": "ppo"}],
        "num_tasks": 2,
    }


@pytest.mark.parametrize(
    ("problem", "key", "message"),
    [
        ({"env": "Humanoid-v5"}, "problem.env", "Ant-v5"),
        ({"batch_size": 0}, "problem.batch_size", "greater than or equal to 1"),
        ({"minibatch_size": -3}, "problem.minibatch_size", "greater than or equal to 1"),
        (
            {"batch_size": 1024, "minibatch_size": 2048},
            "problem",
            "minibatch_size (2048) exceeds batch_size (1024)",
        ),
        ({"minibatch_size": 100}, "problem", "must divide batch_size"),
        ({"env_runners": 3}, "problem", "multiple of the number of envs"),
        ({"iterations_per_step": 1, "env_runners": 4}, "problem", "fewer than max_episode_steps"),
        ({"ant_observation": "original"}, "problem", "applies to Ant-v5 and SlipperyAnt-v5"),
        ({"friction_change_every": 1000}, "problem", "SlipperyAnt-v5 only"),
        ({"gamma": 1.5}, "problem.gamma", "less than or equal to 1"),
        ({"clip": 0}, "problem.clip", "greater than 0"),
        ({"env_runners": -1}, "problem.env_runners", "greater than or equal to 0"),
        ({"runner_cpus": 0}, "problem.runner_cpus", "greater than 0"),
        ({"rollout": 5}, "problem.rollout", "unknown key"),
    ],
)
def test_bad_rl_settings_are_rejected_naming_the_key(problem, key, message):
    with pytest.raises(SweepError) as error:
        validate_sweep(_document(**problem), "rl.yaml")
    text = str(error.value)
    assert f"rl.yaml: {key}: " in text and message in text, text


@pytest.mark.parametrize(
    ("entry", "key", "message"),
    [
        (
            {"algorithm": "bp"},
            "algorithms[0].algorithm",
            "allowed for rl: ['cbp', 'l2', 'l2_init', 'layer_reset', 'parseval', 'plasticity_injection', 'ppo', 'redo', 'snr']",
        ),
        (
            {"algorithm": "layer_reset", "layers": 4},
            "algorithms[0].layers",
            "the network has 3 weight layers",
        ),
        ({"algorithm": "l2_init"}, "algorithms[0].l2_init", "required key is missing"),
        (
            {"algorithm": "snr", "rejection_percentile": 1.0},
            "algorithms[0].rejection_percentile",
            "less than 1",
        ),
        ({"algorithm": "parseval", "optimizer": "sgd"}, "algorithms[0].optimizer", "unknown key"),
        ({"algorithm": "l2"}, "algorithms[0].weight_decay", "required key is missing"),
        ({"algorithm": "ppo", "beta1": 1.0}, "algorithms[0].beta1", "less than 1"),
        ({"algorithm": "cbp", "util_type": "nope"}, "algorithms[0].util_type", "contribution"),
        (
            {"algorithm": "redo", "reset_period": 0},
            "algorithms[0].reset_period",
            "greater than or equal to 1",
        ),
        ({"algorithm": "ppo", "weight_decay": 1e-3}, "algorithms[0].weight_decay", "unknown key"),
    ],
)
def test_bad_rl_algorithms_are_rejected_naming_the_key(entry, key, message):
    document = {**_document(), "algorithms": [entry]}
    with pytest.raises(SweepError) as error:
        validate_sweep(document, "rl.yaml")
    text = str(error.value)
    assert f"rl.yaml: {key}: " in text and message in text, text


def test_fidelity_resolves_the_cbp_and_redo_options():
    for fidelity, expected in (("original", False), ("corrected", True)):
        document = {
            **_document(),
            "fidelity": fidelity,
            "algorithms": [{"algorithm": "cbp"}, {"algorithm": "redo"}],
        }
        cbp, redo = validate_sweep(document, "rl.yaml").trials
        assert cbp["hyperparameters"]["bias_correction"] is expected
        assert cbp["hyperparameters"]["reset_optimizer_state"] is expected
        assert redo["hyperparameters"]["reset_optimizer_state"] is expected


SWEEP_FILES = {
    # file: (env, seeds, paper's env steps, labels)
    "ant.yaml": ("Ant-v5", 30, 50_000_000, {"std", "ns", "l2", "cbp", "cbpi", "redo"}),
    "hopper.yaml": ("Hopper-v5", 30, 100_000_000, {"std", "ns", "l2", "cbp", "redo"}),
    "walker2d.yaml": ("Walker2d-v5", 30, 50_000_000, {"std", "ns", "l2", "cbp", "redo"}),
    "slippery_ant.yaml": ("SlipperyAnt-v5", 100, 20_000_000, {"std", "ns", "l2", "cbp", "redo"}),
}
# label -> (beta1, beta2, weight decay) of spec/problems.md §5's table
OPTIMIZER = {
    "std": (0.9, 0.999, 0.0),
    "ns": (0.99, 0.99, 0.0),
    "l2": (0.99, 0.99, 1e-3),
    "cbp": (0.99, 0.99, 1e-4),
    "cbpi": (0.99, 0.99, 1e-4),
    "redo": (0.99, 0.99, 1e-4),
}


@pytest.mark.parametrize("name", sorted(SWEEP_FILES))
def test_rl_sweep_files_are_the_papers_configs(name):
    assert {p.name for p in RL_SWEEPS.glob("*.yaml")} == set(SWEEP_FILES)
    env, seeds, paper_steps, labels = SWEEP_FILES[name]
    sweep = load_sweep(RL_SWEEPS / name)
    assert sweep.problem == "rl" and sweep.document["fidelity"] == "original"
    assert {t["label"] for t in sweep.trials} == labels
    assert {t["seed"] for t in sweep.trials} == set(range(seeds))
    assert len(sweep.trials) == seeds * len(labels)
    # seed-batched (issue 15): 10 seeds per Tune trial, their envs stepped by 2 runner actors, 2 CPUs
    assert sweep.seeds_per_trial == 10 and sweep.resources["cpu"] == 1
    assert [len(group) for group in sweep.groups] == [10] * (seeds // 10) * len(labels)
    for trial in sweep.trials:
        s = trial["problem_settings"]
        assert s["env"] == env
        assert s["ant_observation"] == ("original" if "Ant" in env else "v5")
        assert (s["batch_size"], s["minibatch_size"], s["epochs"]) == (2048, 128, 10)
        assert (s["gamma"], s["gae_lambda"], s["clip"], s["value_coef"], s["entropy_coef"]) == (
            0.99,
            0.95,
            0.2,
            1,
            0,
        )
        assert s["max_grad_norm"] is None and not s["normalize_observations"] and not s["normalize_rewards"]
        assert s["env_runners"] == 2 and s["runner_cpus"] == 0.5 and s["max_episode_steps"] == 1000
        assert s["envs_per_seed"] == 1 and config_from_trial(trial).total_envs == 1  # one env per seed
        assert s["friction_change_every"] == 2_000_000
        env_steps = trial["num_steps"] * s["iterations_per_step"] * s["batch_size"]
        assert paper_steps <= env_steps < paper_steps + s["iterations_per_step"] * s["batch_size"]
        assert trial["network"] == {
            "activation": "relu",
            "hidden_units": 256,
            "hidden_layers": 2,
            "layer_norm": False,
            "crelu": False,
        }
        hyper = trial["hyperparameters"]
        assert hyper["step_size"] == 1e-4 and hyper["eps"] == 1e-8
        beta1, beta2, weight_decay = OPTIMIZER[trial["label"]]
        assert (hyper["beta1"], hyper["beta2"], hyper.get("weight_decay", 0.0)) == (
            beta1,
            beta2,
            weight_decay,
        )
        if trial["algorithm"] == "cbp":
            assert (hyper["replacement_rate"], hyper["maturity_threshold"]) == (1e-4, 10_000)
            assert hyper["decay_rate"] == (0.0 if trial["label"] == "cbpi" else 0.99)
            assert hyper["util_type"] == hyper["value_util_type"] == "contribution"
            assert hyper["init"] == "lecun" and hyper["accumulate"] is False
        if trial["algorithm"] == "redo":
            assert (hyper["threshold"], hyper["reset_period"], hyper["init"]) == (0.1, 100, "lecun")
        for option in ("bias_correction", "reset_optimizer_state"):
            if option in hyper:
                assert hyper[option] is False  # the original's, stated in the file
    for entry in sweep.document["algorithms"]:
        if entry["algorithm"] in ("cbp", "redo"):
            assert entry["reset_optimizer_state"] is False
        if entry["algorithm"] == "cbp":
            assert entry["bias_correction"] is False


def test_quickstart_rl_validates_and_uses_runner_actors():
    sweep = load_sweep(ROOT / "sweeps" / "quickstart_rl.yaml")
    [settings] = {repr(t["problem_settings"]) for t in sweep.trials}
    assert sweep.trials[0]["problem_settings"]["env_runners"] >= 1
    assert len(sweep.trials) == 2 and "Hopper-v5" in settings


def test_network_the_runners_cannot_run_is_rejected():
    document = {**_document(), "network": {"activation": "elu", "hidden_units": 0}}
    with pytest.raises(SweepError) as error:
        validate_sweep(document, "rl.yaml")
    text = str(error.value)
    assert "rl.yaml: network.activation: Input should be 'relu' or 'tanh'" in text
    assert "rl.yaml: network.hidden_units: " in text


def test_the_methods_since_the_paper_run_on_both_ppo_nets():
    document = {
        **_document(),
        "algorithms": [
            {"algorithm": "layer_reset", "reset_period": 500, "layers": 1},
            {"algorithm": "parseval", "parseval_strength": 1e-3},
            {"algorithm": "snr"},
            {"algorithm": "l2_init", "l2_init": 1e-3},
        ],
    }
    sweep = validate_sweep(document, "rl.yaml")
    configs = {t["algorithm"]: config_from_trial(t) for t in sweep.trials}
    assert configs["layer_reset"].method.layers == 1 and configs["layer_reset"].method.reset_period == 500
    assert configs["parseval"].method.parseval_strength == 1e-3
    assert configs["snr"].method is not None and configs["l2_init"].l2_init == 1e-3
