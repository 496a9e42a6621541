"""docs/adding_a_method.md stays true: its example sweep validates and expands as it says, and every
registered method has a schema entry that the supervised problems offer."""

from __future__ import annotations

import re
from pathlib import Path

from lop_ray.experiments.learner import METHODS, learner_from_trial
from lop_ray.problems.continual_imagenet import CONTINUAL_IMAGENET
from lop_ray.problems.learners import SUPERVISED_ALGORITHMS
from lop_ray.problems.permuted_mnist import PERMUTED_MNIST
from lop_ray.problems.regression import REGRESSION
from lop_ray.schema import load_sweep

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


def test_the_documented_sweep_validates_and_runs_its_method_seed_batched(tmp_path):
    example = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    path = tmp_path / "my_redo.yaml"
    path.write_text(example)
    sweep = load_sweep(path)
    assert len(sweep.trials) == 60 and len(sweep.groups) == 3  # (bp + 2 ReDo thresholds) × 20 seeds
    redo = [trial for trial in sweep.trials if trial["algorithm"] == "redo"]
    settings = learner_from_trial(redo[0])
    assert type(settings.method) is METHODS["redo"].config
    assert settings.method.reset_period == 1000 and settings.step_size == 0.03
    assert all(trial["seeds_per_trial"] == 20 for trial in redo)


def test_every_registered_method_is_offered_by_every_supervised_problem():
    for name in METHODS:
        assert name in SUPERVISED_ALGORITHMS
        for spec in (REGRESSION, PERMUTED_MNIST, CONTINUAL_IMAGENET):
            assert name in spec.algorithms, (spec.name, name)
