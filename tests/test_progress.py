"""The live progress of a sweep as a job log shows it (stderr not a terminal): status lines with the
trials by state, the steps done of all, and an ETA; and `quiet`, which leaves only the summary."""

from __future__ import annotations

import re

from lop_ray.progress import SweepProgress
from lop_ray.schema import load_sweep
from lop_ray.sweep import run_sweep
from tests.conftest import TINY_REGRESSION_HEAD, write_sweep

SWEEP = (
    TINY_REGRESSION_HEAD
    + """\
seeds: {seeds}
num_tasks: 2
algorithms:
  - algorithm: bp
    step_size: 0.01
resources: {{cpu: 1}}
storage: {storage}
"""
)
LINE = re.compile(
    r"^\[sweep\] (\d+)/(\d+) steps \((\d+)%\), (\d+) pending, (\d+) running, (\d+) done, "
    r"(\d+) errored, ETA (\?|\d+:\d\d:\d\d)$"
)


def test_status_lines_of_a_real_sweep_and_quiet(tmp_path, local_ray, capfd):
    loud = load_sweep(
        write_sweep(tmp_path / "loud.yaml", SWEEP.format(name="loud", seeds=[0, 1], storage=tmp_path))
    )
    assert len(loud.groups) == 2 and loud.steps_per_trial == 4
    assert run_sweep(loud).errors == 0
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("[sweep]")]
    assert len(lines) >= 2, err  # the first status line at once, one at the end
    for line in lines:
        match = LINE.match(line)
        assert match, line
        done, total, percent, pending, running, finished, errored = map(int, match.groups()[:7])
        assert total == 8 and 0 <= done <= total and percent == round(100 * done / total)
        assert pending + running + finished + errored == 2 and errored == 0, line
    assert lines[-1] == "[sweep] 8/8 steps (100%), 0 pending, 0 running, 2 done, 0 errored, ETA 0:00:00"
    assert "last / first" in out

    # one trial is enough to show that nothing but the summary is printed
    quiet = load_sweep(
        write_sweep(tmp_path / "quiet.yaml", SWEEP.format(name="quiet", seeds=[0], storage=tmp_path))
    )
    assert run_sweep(quiet, quiet=True).errors == 0
    out, err = capfd.readouterr()
    assert "[sweep]" not in err and "[sweep]" not in out
    assert "last / first" in out  # the final summary stays


def test_eta_is_the_time_left_at_the_rate_since_steps_began_to_count():
    progress = SweepProgress(total_trials=2, steps_per_trial=10)
    assert progress.eta(0) == "?"  # nothing done yet: no rate
    progress._first = (100.0, 2)  # the first status seen with steps done: 2 of 20 at t = 100 s
    assert progress.eta(2, now=101.0) == "?"
    assert progress.eta(6, now=104.0) == "0:00:14"  # 1 step/s, 14 steps left
    assert progress.eta(20, now=130.0) == "0:00:00"


def test_a_resumed_sweep_takes_the_quiet_flag_of_the_resume_not_of_the_first_run(monkeypatch):
    # Tune restores callbacks pickled with the sweep: the driver's flag for this run decides
    import pickle

    from lop_ray.progress import QUIET_ENV

    restored = pickle.loads(pickle.dumps(SweepProgress(total_trials=1, steps_per_trial=3, quiet=True)))
    monkeypatch.setenv(QUIET_ENV, "0")
    restored.setup()
    assert restored.quiet is False
    loud_first = pickle.loads(pickle.dumps(SweepProgress(total_trials=1, steps_per_trial=3)))
    monkeypatch.setenv(QUIET_ENV, "1")
    loud_first.setup()
    assert loud_first.quiet is True
