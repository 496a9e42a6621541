"""Each method's cost per PPO update on PPO's networks, side by side in one run, as a ratio to
plain PPO (tuned Adam) on the same rollout.

One update = the learner's whole iteration on one fixed 2,048-step Ant rollout (value pass, GAE,
10 epochs × 16 minibatches of 128 with each minibatch's Adam step and the method on both nets),
the paper's 256-256 nets, S seeds in one learner, one thread. Collection is left out: no method
changes it. Samples of every method are interleaved, so load changes hit them alike; the median is
reported. Reset periods are short (every 40 minibatch steps) so that their work is in the window.

    .venv/bin/python bench/ppo_method_costs.py [--seeds 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lop_ray.algos.cbp import CBPConfig
from lop_ray.algos.injection import InjectionConfig
from lop_ray.algos.layer_reset import LayerResetConfig
from lop_ray.algos.parseval import ParsevalConfig
from lop_ray.algos.redo import ReDoConfig
from lop_ray.algos.snr import SNRConfig
from lop_ray.experiments.ppo import PPOExperiment, PPOExperimentConfig
from lop_ray.rl.runner import policy_weights

CBP = CBPConfig(replacement_rate=1e-4, maturity_threshold=100, init="lecun")
METHODS = {
    "ppo (tuned Adam)": {},
    "l2": {"weight_decay": 1e-3},
    "l2_init": {"l2_init": 1e-3},
    "cbp": {"policy_cbp": CBP, "value_cbp": CBP, "weight_decay": 1e-4},
    "redo": {"redo": ReDoConfig(threshold=0.1, reset_period=40, init="lecun")},
    "layer_reset (last layer)": {"method": LayerResetConfig(reset_period=40, layers=1)},
    "parseval": {"method": ParsevalConfig(parseval_strength=1e-3)},
    "snr": {"method": SNRConfig(init="lecun")},
    # injected at the first minibatch step: the window is its steady cost (the runners' acting aside)
    "injection (2-layer head)": {"method": InjectionConfig(1, head_layers=2, max_injections=1)},
    "layer_norm (network)": {"layer_norm": True},
    "crelu (network)": {"crelu": True},
}


def experiment(seeds: int, **method) -> PPOExperiment:
    config = PPOExperimentConfig(
        env="Ant-v5", ant_observation="original", envs_per_seed=1, beta1=0.99, beta2=0.99, **method
    )
    return PPOExperiment(config, seeds=list(range(seeds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    learners = {name: experiment(args.seeds, **method) for name, method in METHODS.items()}
    reference = learners["ppo (tuned Adam)"]
    # one rollout, acted by the initial policy (every learner starts from the same nets)
    rollouts = reference.runners.collect(policy_weights(reference.policy), reference.config.steps_per_env)
    samples: dict[str, list[float]] = {name: [] for name in learners}
    for _ in range(args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner._learn(rollouts, probe=False)
            samples[name].append(time.perf_counter() - start)
    base = statistics.median(samples["ppo (tuned Adam)"])
    print(f"Ant-v5 PPO update, {args.seeds} seed(s) in one learner, 1 thread, median of {args.repeats}")
    print(f"{'method':<26} {'s per update':>12} {'vs ppo':>7}")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"{name:<26} {median:>12.2f} {median / base:>6.2f}x")
    for learner in learners.values():
        learner.close()


if __name__ == "__main__":
    main()
