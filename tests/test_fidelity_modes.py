"""A `fidelity: [original, corrected]` sweep changes only what the fidelity options say: plain
backprop's trials are identical in both modes, continual backprop's are not."""

from __future__ import annotations

from lop_ray.data.shards import load_dataset
from lop_ray.experiments.permuted_mnist import PermutedMNISTExperiment, config_from_trial
from lop_ray.schema import load_sweep
from tests.conftest import write_sweep

SWEEP = """\
name: modes
problem: {name: permuted_mnist, dataset: digits, probe_examples: 50}
network: {hidden_units: 12}
seeds: [4]
num_tasks: 2
fidelity: [original, corrected]
algorithms:
  - algorithm: bp
    step_size: 0.02
    momentum: 0.9
  - algorithm: cbp
    step_size: 0.02
    momentum: 0.9
    replacement_rate: 0.01
    maturity_threshold: 20
    accumulate: true
storage: /unused
"""


def test_only_the_algorithms_with_fidelity_options_change(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path / "modes.yaml", SWEEP))
    dataset = load_dataset("digits", None)
    results = {}
    for trial in sweep.trials:
        experiment = PermutedMNISTExperiment(config_from_trial(trial), dataset)
        results[(trial["algorithm"], trial["fidelity"])] = [experiment.run_step()[0] for _ in range(2)]
    assert results[("bp", "original")] == results[("bp", "corrected")]
    original, corrected = results[("cbp", "original")], results[("cbp", "corrected")]
    assert original[0]["replaced_units"] > 0
    assert original[-1]["accuracy"] != corrected[-1]["accuracy"]
