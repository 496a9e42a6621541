"""The sweep file schema: bad input is rejected before Ray starts (exit 2, a message naming the file,
the line, the key and what is allowed, nothing written); good input expands into the right trials.

Ray is never started here: `lop_ray.sweep` (the only module of the CLI that imports Ray) is replaced by
a stand-in that fails the test if a bad sweep ever got as far as running.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lop_ray import cli
from lop_ray.problems import PROBLEMS
from lop_ray.schema import Sweep, SweepError, load_sweep, validate_sweep
from lop_ray.tracking import trial_run_name
from tests.conftest import TINY_REGRESSION, write_sweep

# Every case's file is HEADER + its own lines; `@STORAGE@` becomes a folder inside tmp_path that must
# never be created. HEADER is 5 lines, so a case's first own line is line 6.
HEADER = """\
name: bad-sweep
problem:
  name: slowly_changing_regression
  flip_after: 100
storage: "@STORAGE@"
"""
BP = """\
algorithms:
  - algorithm: bp
    step_size: 0.01
"""
TASKS = "num_tasks: 2\n"


@dataclass(frozen=True)
class Bad:
    """A malformed sweep: its text, the key path the message must name, the line it must point at,
    and fragments that say what is allowed or what is wrong."""

    id: str
    text: str
    key: str
    line: int | None
    fragments: tuple[str, ...]


def bad(id: str, body: str, key: str, line: int | None, *fragments: str, header: str = HEADER) -> Bad:
    return Bad(id, header + body, key, line, fragments)


CBP = """\
algorithms:
  - algorithm: bp
    step_size: 0.01
  - algorithm: cbp
    step_size: 0.01
"""  # algorithms[1] starts at line 8; a key added after it is on line 11
ALGOS = ("'bp'", "'cbp'", "'l2'", "'snp'")

PERMUTED_HEADER = """\
name: bad-sweep
problem:
  name: permuted_mnist
  dataset: mnist
storage: "@STORAGE@"
"""

CASES = [
    # --- permuted MNIST's data must be prepared before anything runs
    bad(
        "mnist without data",
        BP + TASKS,
        "problem.data",
        2,
        "required for mnist",
        "lop-ray data prepare mnist --src RAW_DIR --dest DIR",
        header=PERMUTED_HEADER,
    ),
    bad(
        "mnist data not prepared",
        BP + TASKS,
        "problem.data",
        5,
        "/not-prepared/manifest.json: not found: prepare the dataset first",
        header=PERMUTED_HEADER.replace('storage: "@STORAGE@"', "  data: /not-prepared")
        + 'storage: "@STORAGE@"\n',
    ),
    bad(
        "unknown dataset",
        BP + TASKS,
        "problem.dataset",
        4,
        "Input should be 'mnist' or 'digits'",
        header=PERMUTED_HEADER.replace("dataset: mnist", "dataset: cifar10"),
    ),
    # --- problem
    bad(
        "unknown problem",
        BP + TASKS,
        "problem.name",
        3,
        "unknown problem 'bit_flipping'",
        f"allowed: {sorted(PROBLEMS)}",
        header=HEADER.replace("slowly_changing_regression", "bit_flipping"),
    ),
    bad(
        "problem name missing",
        BP + TASKS,
        "problem.name",
        2,
        "required key is missing",
        f"allowed: {sorted(PROBLEMS)}",
        header=HEADER.replace("  name: slowly_changing_regression\n", ""),
    ),
    bad(
        "unknown key in problem settings",
        BP + TASKS,
        "problem.flip_afterr",
        4,
        "unknown key",
        "'flip_after'",
        "'examples_per_step'",
        header=HEADER.replace("flip_after:", "flip_afterr:"),
    ),
    bad(
        "bad bit_change",
        BP + TASKS,
        "problem.bit_change",
        5,
        "'redraw' or 'flip_one'",
        "got 'flip_two'",
        header=HEADER.replace("  flip_after: 100\n", "  flip_after: 100\n  bit_change: flip_two\n"),
    ),
    bad(
        "examples_per_step does not divide the stream",
        BP + TASKS,
        "problem.examples_per_step",
        5,
        "examples_per_step (30) must divide",
        "num_tasks × flip_after = 200 examples",
        header=HEADER.replace("  flip_after: 100\n", "  flip_after: 100\n  examples_per_step: 30\n"),
    ),
    # --- algorithms
    bad(
        "unknown algorithm",
        "algorithms:\n  - algorithm: backprop\n    step_size: 0.01\n" + TASKS,
        "algorithms[0].algorithm",
        7,
        "unknown algorithm 'backprop'",
        "allowed for slowly_changing_regression",
        *ALGOS,
    ),
    bad(
        "missing algorithm key",
        "algorithms:\n  - step_size: 0.01\n" + TASKS,
        "algorithms[0].algorithm",
        7,
        "required key is missing",
        *ALGOS,
    ),
    bad(
        "algorithm given as a grid",
        "algorithms:\n  - algorithm: [bp, l2]\n    step_size: 0.01\n" + TASKS,
        "algorithms[0].algorithm",
        7,
        "a grid is not allowed here",
        *ALGOS,
    ),
    bad("empty algorithms list", "algorithms: []\n" + TASKS, "algorithms", 6, "at least 1 item", "got []"),
    bad(
        "unknown key in an algorithm entry",
        BP + "    weight_decay: 0.001\n" + TASKS,
        "algorithms[0].weight_decay",
        9,
        "unknown key for algorithm 'bp'",
        "allowed: ['beta1', 'beta2', 'eps', 'momentum', 'optimizer', 'step_size']",
    ),
    bad(
        "misspelled CBP key",
        CBP + "    replacment_rate: 0.001\n" + TASKS,
        "algorithms[1].replacment_rate",
        11,
        "unknown key for algorithm 'cbp'",
        "'replacement_rate'",
        "'maturity_threshold'",
    ),
    bad(
        "required key missing (L2 without weight_decay)",
        "algorithms:\n  - algorithm: l2\n    step_size: 0.01\n" + TASKS,
        "algorithms[0].weight_decay",
        7,
        "required key is missing",
    ),
    bad(
        "string where a number is expected",
        "algorithms:\n  - algorithm: bp\n    step_size: fast\n" + TASKS,
        "algorithms[0].step_size",
        8,
        "valid number",
        "got 'fast'",
    ),
    bad(
        "boolean where a number is expected",
        "algorithms:\n  - algorithm: bp\n    step_size: true\n" + TASKS,
        "algorithms[0].step_size",
        8,
        "expected a number, got a boolean",
    ),
    bad(
        "yes (a YAML boolean) as num_tasks",
        BP + "num_tasks: yes\n",
        "num_tasks",
        9,
        "expected a number, got a boolean",
    ),
    bad(
        "empty grid",
        "algorithms:\n  - algorithm: bp\n    step_size: []\n" + TASKS,
        "algorithms[0].step_size",
        8,
        "empty grid",
        "at least one value",
    ),
    bad(
        "negative step size",
        "algorithms:\n  - algorithm: bp\n    step_size: -0.01\n" + TASKS,
        "algorithms[0].step_size",
        8,
        "greater than 0",
        "got -0.01",
    ),
    bad(
        "one bad point in a step-size grid",
        "algorithms:\n  - algorithm: bp\n    step_size: [0.01, 0, 0.001]\n" + TASKS,
        "algorithms[0].step_size",
        8,
        "greater than 0",
        "got 0",
    ),
    bad(
        "infinite step size",
        "algorithms:\n  - algorithm: bp\n    step_size: .inf\n" + TASKS,
        "algorithms[0].step_size",
        8,
        "finite number",
    ),
    bad(
        "replacement_rate above 1",
        CBP + "    replacement_rate: 1.5\n" + TASKS,
        "algorithms[1].replacement_rate",
        11,
        "less than or equal to 1",
        "got 1.5",
    ),
    bad(
        "replacement_rate below 0",
        CBP + "    replacement_rate: -0.1\n" + TASKS,
        "algorithms[1].replacement_rate",
        11,
        "greater than or equal to 0",
        "got -0.1",
    ),
    bad(
        "decay_rate 1",
        CBP + "    decay_rate: 1\n" + TASKS,
        "algorithms[1].decay_rate",
        11,
        "less than 1",
        "got 1",
    ),
    bad(
        "negative maturity_threshold",
        CBP + "    maturity_threshold: -10\n" + TASKS,
        "algorithms[1].maturity_threshold",
        11,
        "greater than or equal to 0",
        "got -10",
    ),
    bad(
        "fractional maturity_threshold",
        CBP + "    maturity_threshold: 2.5\n" + TASKS,
        "algorithms[1].maturity_threshold",
        11,
        "valid integer",
        "got 2.5",
    ),
    bad(
        "bad util_type",
        CBP + "    util_type: usefulness\n" + TASKS,
        "algorithms[1].util_type",
        11,
        "'adaptable_contribution'",
        "'contribution'",
        "got 'usefulness'",
    ),
    bad(
        "bad optimizer",
        BP + "    optimizer: rmsprop\n" + TASKS,
        "algorithms[0].optimizer",
        9,
        "'sgd', 'adam' or 'adamw'",
        "got 'rmsprop'",
    ),
    bad(
        "duplicate algorithm labels",
        BP + "  - algorithm: l2\n    label: bp\n    step_size: 0.01\n    weight_decay: 0.001\n" + TASKS,
        "algorithms[1].label",
        10,
        "label 'bp' is already used by algorithms[0]",
        "give each entry its own `label`",
    ),
    bad(
        "two entries of one algorithm without labels",
        BP + "  - algorithm: bp\n    step_size: 0.1\n" + TASKS,
        "algorithms[1].label",
        9,
        "label 'bp' is already used by algorithms[0]",
    ),
    # --- network
    bad(
        "unknown network key",
        "network:\n  width: 5\n" + BP + TASKS,
        "network.width",
        7,
        "unknown key",
        "allowed: ['activation', 'crelu', 'hidden_units', 'layer_norm']",
    ),
    bad(
        "bad activation name",
        "network:\n  activation: gelu\n" + BP + TASKS,
        "network.activation",
        7,
        "'relu', 'tanh', 'sigmoid', 'elu', 'leaky_relu', 'swish' or 'selu'",
        "got 'gelu'",
    ),
    bad(
        "bad activation inside a grid",
        "network:\n  activation: [relu, relux]\n" + BP + TASKS,
        "network.activation",
        7,
        "'leaky_relu'",
        "got 'relux'",
    ),
    bad(
        "negative hidden_units",
        "network:\n  hidden_units: -5\n" + BP + TASKS,
        "network.hidden_units",
        7,
        "greater than or equal to 0",
    ),
    # --- top level
    bad(
        "unknown top-level key",
        BP + TASKS + "epochs: 3\n",
        "epochs",
        10,
        "unknown key",
        "'num_tasks'",
        "'seeds'",
    ),
    bad(
        "bad fidelity value", BP + TASKS + "fidelity: faithful\n", "fidelity", 10, "'original' or 'corrected'"
    ),
    bad(
        "fidelity grid with a bad mode",
        BP + TASKS + "fidelity: [original, faithful]\n",
        "fidelity[1]",
        10,
        "'original' or 'corrected'",
    ),
    bad(
        "fidelity grid repeating a mode",
        BP + TASKS + "fidelity: [corrected, corrected]\n",
        "fidelity",
        10,
        "lists each mode once",
    ),
    bad(
        "seeds_per_trial 0",
        BP + TASKS + "seeds_per_trial: 0\n",
        "seeds_per_trial",
        10,
        "greater than or equal to 1",
    ),
    bad("num_tasks 0", BP + "num_tasks: 0\n", "num_tasks", 9, "greater than or equal to 1", "got 0"),
    bad("num_tasks missing", BP, "num_tasks", None, "required key is missing"),
    bad(
        "negative seed",
        BP + TASKS + "seeds: [0, -1, 2]\n",
        "seeds[1]",
        10,
        "greater than or equal to 0",
        "got -1",
    ),
    bad(
        "duplicate seed",
        BP + TASKS + "seeds: [0, 1, 1, 2]\n",
        "seeds",
        10,
        "seeds must be distinct",
        "repeated: [1]",
    ),
    bad(
        "seeds neither a list nor a range",
        BP + TASKS + "seeds: 7\n",
        "seeds",
        10,
        "a list of distinct non-negative integers",
        "{first: 0, count: 100}",
    ),
    bad("empty seed list", BP + TASKS + "seeds: []\n", "seeds", 10, "at least 1 item"),
    bad(
        "seed range with an unknown key",
        BP + TASKS + "seeds: {first: 0, count: 5, step: 2}\n",
        "seeds.step",
        10,
        "unknown key",
        "allowed: ['count', 'first']",
    ),
    bad(
        "seed range of zero seeds",
        BP + TASKS + "seeds: {count: 0}\n",
        "seeds.count",
        10,
        "greater than or equal to 1",
    ),
    bad(
        "unknown resources key",
        BP + TASKS + "resources: {cpu: 1, gpus: 1}\n",
        "resources.gpus",
        10,
        "unknown key",
        "allowed: ['cpu', 'gpu']",
    ),
    bad(
        "a key given twice",
        BP + TASKS + "num_tasks: 3\n",
        "num_tasks",
        10,
        "duplicate key (first given at line 9)",
    ),
    bad(
        "top-level list",
        "",
        "(top level)",
        1,
        "a sweep file is a mapping",
        "got a list",
        header="- name: x\n",
    ),
    bad("empty file", "", "(top level)", 1, "a sweep file is a mapping", "got an empty file", header=""),
    # --- YAML syntax: no key path, but the line and what the parser expected
    bad(
        "YAML syntax error: unclosed flow sequence",
        "algorithms:\n  - algorithm: bp\n    step_size: [0.01, 0.001\nnum_tasks: 2\n",
        "",
        9,
        "not valid YAML at line 9",
        "expected ',' or ']'",
        "while parsing a flow sequence at line 8",
    ),
    bad(
        "YAML syntax error: bad indentation",
        "algorithms:\n  - algorithm: bp\n     step_size: 0.01\n" + TASKS,
        "",
        8,
        "not valid YAML at line 8",
        "mapping values are not allowed here",
    ),
]
assert len({case.id for case in CASES}) == len(CASES)


class _RaySentinel(types.ModuleType):
    """Stands in for `lop_ray.sweep`: running a sweep would start Ray, which a test must never do."""

    def __init__(self) -> None:
        super().__init__("lop_ray.sweep")
        self.runs: list[tuple[Sweep, bool]] = []

    def run_sweep(self, sweep: Sweep, quiet: bool = False):
        self.runs.append((sweep, quiet))
        return types.SimpleNamespace(errors=[])

    def run_sweeps(self, sweeps: list[Sweep], quiet: bool = False):
        return [self.run_sweep(sweep, quiet) for sweep in sweeps]

    def resume_sweep(self, results_dir: str, quiet: bool = False):  # pragma: no cover
        raise AssertionError("resume must not run in the schema tests")


@pytest.fixture
def no_ray(monkeypatch) -> _RaySentinel:
    sentinel = _RaySentinel()
    monkeypatch.setitem(sys.modules, "lop_ray.sweep", sentinel)
    return sentinel


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("check", [True, False], ids=["--check", "run"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_sweep_is_rejected_before_ray(case: Bad, check: bool, tmp_path, capsys, no_ray):
    storage = tmp_path / "storage"
    path = tmp_path / "sweep.yaml"
    path.write_text(case.text.replace("@STORAGE@", str(storage)))
    before = _files_under(tmp_path)

    code, out, err = _run_cli(["sweep", str(path)] + (["--check"] if check else []), capsys)

    assert code == cli.EXIT_BAD_INPUT == 2, err
    assert out == ""
    assert str(path) in err
    if case.line is not None:
        assert f"{path}:{case.line}: " in err, err
    if case.key:
        assert f": {case.key}: " in err, err
    for fragment in case.fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert not storage.exists()
    assert _files_under(tmp_path) == before, "a rejected sweep wrote something"
    assert no_ray.runs == [], "a rejected sweep got as far as running"
    assert not _ray_started()


def test_bad_sweeps_raise_sweep_error_with_every_problem(tmp_path):
    """All errors of a file are reported together, each on its own line, in file order."""
    path = tmp_path / "many.yaml"
    path.write_text(
        HEADER.replace("@STORAGE@", str(tmp_path / "s"))
        + "algorithms:\n"
        + "  - algorithm: bp\n"
        + "    step_size: fast\n"  # line 8
        + "  - algorithm: cbp\n"
        + "    step_size: 0.01\n"
        + "    replacement_rate: 1.5\n"  # line 11
        + "    decay_rate: 1\n"  # line 12
        + "network: {activation: gelu}\n"  # line 13
        + TASKS
    )
    with pytest.raises(SweepError) as raised:
        load_sweep(path)
    problems = raised.value.problems
    assert raised.value.path == str(path)
    assert len(problems) == 4, problems
    assert [p.split(": ")[1] for p in problems] == [
        "network.activation",
        "algorithms[0].step_size",
        "algorithms[1].replacement_rate",
        "algorithms[1].decay_rate",
    ]
    assert [p.split(": ")[0] for p in problems] == [f"{path}:{n}" for n in (13, 8, 11, 12)]


def test_several_files_are_all_validated_before_the_first_runs(tmp_path, capsys, no_ray):
    storage = tmp_path / "storage"
    good = write_sweep(
        tmp_path / "good.yaml", TINY_REGRESSION.format(name="good", num_tasks=1, storage=storage)
    )
    bad = write_sweep(
        tmp_path / "bad.yaml",
        TINY_REGRESSION.format(name="bad", num_tasks=1, storage=storage).replace("0.001", "fast"),
    )
    before = _files_under(tmp_path)
    code, out, err = _run_cli(["sweep", str(good), str(bad)], capsys)
    assert code == cli.EXIT_BAD_INPUT and out == ""
    assert f"{bad}:" in err and "step_size" in err and str(good) not in err
    assert no_ray.runs == [] and _files_under(tmp_path) == before and not _ray_started()

    other = write_sweep(
        tmp_path / "other.yaml", TINY_REGRESSION.format(name="other", num_tasks=1, storage=storage)
    )
    code, out, _ = _run_cli(["sweep", str(good), str(other), "--check"], capsys)
    assert code == 0 and out.splitlines() == [
        f"{good}: valid; 4 trials × 2 steps",
        f"{other}: valid; 4 trials × 2 steps",
    ]
    assert _run_cli(["sweep", str(good), str(other)], capsys)[0] == 0
    assert [sweep.name for sweep, _ in no_ray.runs] == ["good", "other"]


def test_sweeps_that_would_share_a_results_directory_are_refused_before_either_runs(tmp_path):
    from lop_ray.sweep import run_sweeps

    storage = tmp_path / "storage"
    first = load_sweep(
        write_sweep(tmp_path / "a.yaml", TINY_REGRESSION.format(name="same", num_tasks=1, storage=storage))
    )
    second = load_sweep(
        write_sweep(tmp_path / "b.yaml", TINY_REGRESSION.format(name="same", num_tasks=1, storage=storage))
    )
    with pytest.raises(SweepError) as raised:
        run_sweeps([first, second])
    [problem] = raised.value.problems
    assert problem.startswith(
        f"{tmp_path / 'b.yaml'}: name: 'same' is also the name of {tmp_path / 'a.yaml'}"
    )
    (storage / "same").mkdir(parents=True)
    (storage / "same" / "lop_ray_sweep.json").write_text("{}")  # a sweep already ran there
    with pytest.raises(SweepError, match="already exist"):
        run_sweeps([first])
    assert not _ray_started()


# --- files that cannot be read


@pytest.mark.parametrize("check", [True, False], ids=["--check", "run"])
def test_missing_file(tmp_path, capsys, no_ray, check):
    path = tmp_path / "nowhere" / "sweep.yaml"
    code, out, err = _run_cli(["sweep", str(path)] + (["--check"] if check else []), capsys)
    assert code == 2 and out == ""
    assert f"{path}: cannot read the sweep file: No such file or directory" in err
    assert _files_under(tmp_path) == set() and no_ray.runs == [] and not _ray_started()


def test_directory_instead_of_a_file(tmp_path, capsys, no_ray):
    """The portable 'unreadable' case: a directory cannot be read as a file, even by root."""
    path = tmp_path / "sweep.yaml"
    path.mkdir()
    code, out, err = _run_cli(["sweep", str(path)], capsys)
    assert code == 2 and out == ""
    assert f"{path}: cannot read the sweep file: Is a directory" in err
    assert _files_under(tmp_path) == {path} and no_ray.runs == [] and not _ray_started()


def test_binary_file(tmp_path, capsys, no_ray):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00\x81")
    code, out, err = _run_cli(["sweep", str(path), "--check"], capsys)
    assert code == 2 and out == ""
    assert f"{path}: cannot read the sweep file: not UTF-8 text (byte 8)" in err
    assert no_ray.runs == [] and not _ray_started()


def test_storage_override_does_not_hide_errors(tmp_path, capsys, no_ray):
    path = tmp_path / "sweep.yaml"
    path.write_text(HEADER.replace("@STORAGE@", str(tmp_path / "a")) + BP + "num_tasks: 0\n")
    code, _, err = _run_cli(["sweep", str(path), "--storage", str(tmp_path / "b")], capsys)
    assert code == 2 and f"{path}:9: num_tasks: " in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and no_ray.runs == []


def test_exit_status_of_the_real_process(tmp_path):
    """The installed entry point: a separate process exits 2, stderr only, nothing written."""
    import subprocess

    storage = tmp_path / "storage"
    path = tmp_path / "sweep.yaml"
    case = next(case for case in CASES if case.id == "unknown problem")
    path.write_text(case.text.replace("@STORAGE@", str(storage)))
    done = subprocess.run(
        [sys.executable, "-m", "lop_ray.cli", "sweep", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{path}:3: problem.name: unknown problem 'bit_flipping'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not storage.exists()


# --- valid sweeps

VALID = """\
name: good-sweep
description: a small sweep for the schema tests
problem:
  name: slowly_changing_regression
  flip_after: 100
  examples_per_step: 50
network:
  activation: [relu, tanh]
algorithms:
  - algorithm: bp
    step_size: [0.01, 0.003, 0.001]
  - algorithm: cbp
    step_size: 0.01
    replacement_rate: [1e-4, 1e-3]
    maturity_threshold: [10, 100]
seeds: {first: 10, count: 3}
num_tasks: 4
storage: "@STORAGE@"
"""


def _write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("@STORAGE@", str(tmp_path / "storage")))
    return path


def test_valid_file_expands_into_seeds_times_grid_points(tmp_path, capsys, no_ray):
    path = _write(tmp_path, VALID)
    sweep = load_sweep(path)
    # 3 seeds × 2 activations × (3 BP step sizes + 2 × 2 CBP points)
    assert len(sweep.trials) == 3 * 2 * (3 + 2 * 2) == 42
    assert sweep.name == "good-sweep" and sweep.problem == "slowly_changing_regression"
    assert sweep.steps_per_trial == 4 * 100 // 50
    assert {t["seed"] for t in sweep.trials} == {10, 11, 12}
    assert all(t["num_tasks"] == 4 and t["num_steps"] == 8 for t in sweep.trials)
    assert len({(t["label"], repr(sorted(t["varying"].items())), t["seed"]) for t in sweep.trials}) == 42

    code, out, err = _run_cli(["sweep", str(path), "--check"], capsys)
    assert (code, err) == (0, "")
    assert out.strip() == f"{path}: valid; 42 trials × 8 steps"
    assert no_ray.runs == [] and not (tmp_path / "storage").exists()


def test_lists_are_grids(tmp_path):
    sweep = load_sweep(_write(tmp_path, VALID))
    bp = {
        (t["network"]["activation"], t["hyperparameters"]["step_size"])
        for t in sweep.trials
        if t["label"] == "bp"
    }
    assert bp == {(a, s) for a in ("relu", "tanh") for s in (0.01, 0.003, 0.001)}
    cbp = [t for t in sweep.trials if t["label"] == "cbp"]
    points = {
        (t["hyperparameters"]["replacement_rate"], t["hyperparameters"]["maturity_threshold"]) for t in cbp
    }
    assert points == {(r, m) for r in (1e-4, 1e-3) for m in (10, 100)}
    # what varies is recorded; single values are not
    assert set(cbp[0]["varying"]) == {"activation", "replacement_rate", "maturity_threshold"}
    assert all(t["hyperparameters"]["step_size"] == 0.01 for t in cbp)


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as a string; the schema still takes it as the float 0.0001
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"
    text = VALID.replace("step_size: [0.01, 0.003, 0.001]", "step_size: 1e-4")
    sweep = load_sweep(_write(tmp_path, text))
    steps = {t["hyperparameters"]["step_size"] for t in sweep.trials if t["label"] == "bp"}
    assert steps == {0.0001}
    assert all(isinstance(s, float) for s in steps)
    rates = {t["hyperparameters"]["replacement_rate"] for t in sweep.trials if t["label"] == "cbp"}
    assert rates == {0.0001, 0.001}


@pytest.mark.parametrize(
    ("fidelity", "expected"),
    [("original", False), ("corrected", True), (None, True)],  # None: the default is corrected
)
def test_fidelity_fills_cbp_options(tmp_path, fidelity, expected):
    text = VALID + (f"fidelity: {fidelity}\n" if fidelity else "")
    sweep = load_sweep(_write(tmp_path, text))
    cbp = [t for t in sweep.trials if t["algorithm"] == "cbp"]
    assert cbp and all(t["fidelity"] == (fidelity or "corrected") for t in sweep.trials)
    for trial in cbp:
        assert trial["hyperparameters"]["bias_correction"] is expected
        assert trial["hyperparameters"]["reset_optimizer_state"] is expected
    bp = next(t for t in sweep.trials if t["algorithm"] == "bp")
    assert "bias_correction" not in bp["hyperparameters"]


def test_a_fidelity_grid_runs_every_trial_in_both_modes_on_the_same_seeds(tmp_path):
    single = load_sweep(_write(tmp_path, VALID))
    text = VALID + "fidelity: [original, corrected]\n"
    both = load_sweep(_write(tmp_path, text))
    assert len(both.trials) == 2 * len(single.trials)
    assert [t["trial_index"] for t in both.trials] == list(range(len(both.trials)))
    for mode, expected in (("original", False), ("corrected", True)):
        trials = [t for t in both.trials if t["fidelity"] == mode]
        assert {t["seed"] for t in trials} == {t["seed"] for t in single.trials}
        assert all(t["varying"]["fidelity"] == mode for t in trials)
        cbp = [t for t in trials if t["algorithm"] == "cbp"]
        assert cbp and all(t["hyperparameters"]["bias_correction"] is expected for t in cbp)
    names = {trial_run_name(t) for t in both.trials}
    assert len(names) == len(both.trials)  # the mode is part of each run's name


def test_explicit_value_wins_over_fidelity(tmp_path):
    text = VALID.replace(
        "    maturity_threshold: [10, 100]\n", "    maturity_threshold: 10\n    bias_correction: true\n"
    )
    sweep = load_sweep(_write(tmp_path, text + "fidelity: original\n"))
    cbp = [t["hyperparameters"] for t in sweep.trials if t["algorithm"] == "cbp"]
    assert cbp and all(h["bias_correction"] is True for h in cbp)  # stated: kept
    assert all(h["reset_optimizer_state"] is False for h in cbp)  # not stated: from `original`

    # and an explicit grid over a fidelity option is a grid like any other
    text = VALID.replace("    maturity_threshold: [10, 100]\n", "    reset_optimizer_state: [true, false]\n")
    sweep = load_sweep(_write(tmp_path, text + "fidelity: original\n", "grid.yaml"))
    cbp = [t["hyperparameters"] for t in sweep.trials if t["algorithm"] == "cbp"]
    assert {h["reset_optimizer_state"] for h in cbp} == {True, False}
    assert {h["bias_correction"] for h in cbp} == {False}


def test_storage_option_overrides_the_file(tmp_path, capsys, no_ray):
    path = _write(tmp_path, VALID)
    assert load_sweep(path).storage == str(tmp_path / "storage")
    assert load_sweep(path, storage="/elsewhere/results").storage == "/elsewhere/results"

    # through the CLI, to the point where the sweep would run (the stand-in records it)
    code, _, err = _run_cli(["sweep", str(path), "--storage", str(tmp_path / "other"), "--quiet"], capsys)
    assert (code, err) == (0, "")
    [(sweep, quiet)] = no_ray.runs
    assert sweep.storage == str(tmp_path / "other") and quiet is True
    assert len(sweep.trials) == 42


def test_storage_option_works_when_the_file_has_none(tmp_path):
    text = "\n".join(line for line in VALID.splitlines() if not line.startswith("storage:"))
    path = _write(tmp_path, text)
    assert load_sweep(path).storage == "./results"  # the default
    assert load_sweep(path, storage=str(tmp_path / "x")).storage == str(tmp_path / "x")


def test_validate_sweep_takes_a_parsed_document():
    document = yaml.safe_load(VALID.replace("@STORAGE@", "/tmp/unused"))
    sweep = validate_sweep(document, "in-memory")
    assert isinstance(sweep, Sweep) and len(sweep.trials) == 42
    with pytest.raises(SweepError) as raised:
        validate_sweep({**document, "num_tasks": -1}, "in-memory")
    assert raised.value.problems == [
        "in-memory: num_tasks: Input should be greater than or equal to 1 (got -1)"
    ]


def test_seeds_of_one_configuration_are_grouped_into_tune_trials(tmp_path):
    text = """\
name: grouped
problem: {name: slowly_changing_regression, flip_after: 100}
network: {activation: [relu, tanh]}
algorithms:
  - algorithm: bp
    step_size: [0.01, 0.003]
seeds: {first: 10, count: 5}
seeds_per_trial: 2
num_tasks: 2
"""
    sweep = load_sweep(_write(tmp_path, text))
    groups = sweep.groups
    assert len(sweep.trials) == 2 * 2 * 5 and len(groups) == 2 * 2 * 3
    assert [[t["seed"] for t in g] for g in groups[:3]] == [[10, 11], [12, 13], [14]]
    for group in groups:
        assert len({(repr(t["hyperparameters"]), repr(t["network"])) for t in group}) == 1
    assert [t["trial_index"] for g in groups for t in g] == list(range(len(sweep.trials)))
    assert all(t["seeds_per_trial"] == 2 for t in sweep.trials)


def test_every_problem_batches_the_seeds_of_a_configuration(tmp_path):
    text = """\
name: hopper
problem: {name: rl, env: Hopper-v5}
algorithms:
  - algorithm: ppo
seeds: [0, 1, 2]
seeds_per_trial: 3
num_tasks: 2
"""
    sweep = load_sweep(_write(tmp_path, text))
    assert [len(group) for group in sweep.groups] == [3]  # PPO's learner is batched (issue 15)
    assert all(t["seeds_per_trial"] == 3 for t in sweep.trials)
    digits = load_sweep(
        _write(
            tmp_path,
            text.replace("{name: rl, env: Hopper-v5}", "{name: permuted_mnist, dataset: digits}").replace(
                "- algorithm: ppo", "- {algorithm: bp, step_size: 0.01}"
            ),
        )
    )
    assert [len(group) for group in digits.groups] == [3]  # permuted MNIST's learners are batched
    regression = load_sweep(_write(tmp_path, VALID.replace("seeds:", "seeds_per_trial: 3\nseeds:")))
    assert {len(group) for group in regression.groups} == {3}  # every regression algorithm is batched
