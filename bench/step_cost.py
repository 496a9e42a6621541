"""Per-example cost of each regression learner (µs/step), measured side by side in one run.

One learner step = forward, loss, backward, optimizer step, interventions, on one example of
slowly-changing regression (20 → 5 → 1, relu), as the paper's runs do. Also compares, on the same
learners, the MLP's hand-written backward with autograd, and our `apply_gradients` SGD with
PyTorch's `torch.optim.SGD` driven through `.grad`: the reasons the learners use both.

    .venv/bin/python bench/step_cost.py [--examples 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lop_ray.algos import CBPConfig
from lop_ray.experiments.learner import LearnerSettings
from lop_ray.experiments.regression import RegressionConfig, RegressionExperiment

CBP = CBPConfig(replacement_rate=1e-4, maturity_threshold=100, util_type="adaptable_contribution")
LEARNERS = {
    "bp (sgd)": LearnerSettings(step_size=0.01),
    "l2 (sgd)": LearnerSettings(algorithm="l2", step_size=0.01, weight_decay=1e-3),
    "snp (sgd)": LearnerSettings(algorithm="snp", step_size=0.01, weight_decay=1e-2, perturb_scale=1e-4),
    "cbp (sgd)": LearnerSettings(algorithm="cbp", step_size=0.01, cbp=CBP),
    "bp (adam)": LearnerSettings(optimizer="adam", step_size=0.001),
    "cbp (adam)": LearnerSettings(algorithm="cbp", optimizer="adam", step_size=0.001, cbp=CBP),
}


def make(
    settings: LearnerSettings, examples: int, torch_sgd: bool = False, autograd: bool = False
) -> RegressionExperiment:
    experiment = RegressionExperiment(RegressionConfig(examples_per_step=examples, learner=settings))
    if autograd:  # what every step cost before the MLP's hand-written backward
        experiment.learner._hand_gradients = None
    if torch_sgd:
        learner = experiment.learner
        learner.optimizer = torch.optim.SGD(experiment.net.parameters(), lr=settings.step_size)
    experiment.run_step()  # warm up; CBP units mature after 100 steps
    return experiment


def time_step(experiment: RegressionExperiment, examples: int) -> float:
    start = time.perf_counter()
    experiment.run_step()
    return (time.perf_counter() - start) / examples * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {name: make(s, args.examples) for name, s in LEARNERS.items()}
    runs["bp (torch.optim.SGD)"] = make(LEARNERS["bp (sgd)"], args.examples, torch_sgd=True)
    runs["bp (sgd, autograd)"] = make(LEARNERS["bp (sgd)"], args.examples, autograd=True)
    runs["cbp (sgd, autograd)"] = make(LEARNERS["cbp (sgd)"], args.examples, autograd=True)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so load changes hit every learner alike
        for name, experiment in runs.items():
            samples[name].append(time_step(experiment, args.examples))
    base = statistics.median(samples["bp (sgd)"])
    print(
        f"{'learner':24s} {'µs/step':>9s} {'× bp (sgd)':>11s}   (median of {args.repeats} × {args.examples} steps)"
    )
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:24s} {median:9.1f} {median / base:11.2f}")


if __name__ == "__main__":
    main()
