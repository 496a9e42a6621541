"""The figure's data: binning per seed, mean ± SE across seeds, windows; tested on the numbers, read
back from real MLflow runs."""

from __future__ import annotations

import math

import numpy as np

from lop_ray import report
from tests.conftest import logged_sweep

SWEEP = """\
name: s
problem: {{name: slowly_changing_regression, flip_after: {per_step}}}
seeds: [0, 1]
num_tasks: 7
algorithms:
  - algorithm: bp
    step_size: 0.01
  - algorithm: cbp
    step_size: 0.01
    replacement_rate: [0.01, 0.001]
storage: /unused
"""


def _rows(values, per_step=10_000):
    return [{"examples": (i + 1) * per_step, "squared_error": v} for i, v in enumerate(values)]


def test_bins_per_seed_then_mean_and_standard_error(tmp_path):
    values = {
        ("bp", 0, None): [1, 3, 5, 7, 9, 11, 100],  # the 7th step is a partial bin
        ("bp", 1, None): [3, 5, 7, 9, 11, 13],
        ("cbp", 0, 0.01): [1, 1, 1, 1],
    }

    def rows_of(trial):
        key = (trial["algorithm"], trial["seed"], trial["hyperparameters"].get("replacement_rate"))
        return _rows(values[key]) if key in values else None

    results = logged_sweep(tmp_path / "r", SWEEP.format(per_step=10_000), rows_of)
    records = report.load_trial_records(results)
    assert len(records) == 3 and all(r.run_id for r in records)
    aggregates = {a.line: a for a in report.aggregate(records, "squared_error", "examples", 20_000)}

    bp = aggregates["bp"]
    assert bp.seeds == 2
    np.testing.assert_array_equal(bp.x, [20_000, 40_000, 60_000])
    np.testing.assert_array_equal(bp.per_seed, [[2, 6, 10], [4, 8, 12]])
    np.testing.assert_array_equal(bp.mean, [3, 7, 11])
    np.testing.assert_allclose(bp.stderr, [1, 1, 1])  # std (ddof 1) √2 over √2 seeds
    assert bp.window(0.34, late=True) == (11.0, 1.0)
    early, early_se = bp.window(0.67, late=False)
    assert early == 5.0 and math.isclose(early_se, 1.0)
    cbp = aggregates["cbp (replacement_rate=0.01)"]
    assert cbp.seeds == 1 and list(cbp.mean) == [1, 1] and list(cbp.stderr) == [0, 0]
    assert set(aggregates) == {"bp", "cbp (replacement_rate=0.01)"}  # no steps logged: no line


def test_headline_figure_falls_back_to_steps_for_short_runs(tmp_path):
    def rows_of(trial):
        return (
            _rows([1.0, 2.0, 3.0], per_step=150)
            if trial["algorithm"] == "bp" and trial["seed"] == 0
            else None
        )

    results = logged_sweep(tmp_path / "r", SWEEP.format(per_step=150), rows_of)
    records = report.load_trial_records(results)
    path, aggregates = report.headline_figure(records, "slowly_changing_regression", "t", results)
    assert path == results / "squared_error.png" and path.stat().st_size > 1000
    assert list(aggregates[0].mean) == [1.0, 2.0, 3.0]


def _line(name: str, mean: list[float]) -> report.Aggregate:
    values = np.asarray(mean)
    return report.Aggregate(name, np.arange(1, len(values) + 1), values, 0 * values, 1, values[None])


def test_a_line_decades_above_the_rest_puts_the_error_axis_on_a_log_scale(tmp_path):
    diverging = [_line("snp 0.1", [50.0, 2000.0, 6000.0]), _line("snp 1e-4", [0.8, 0.9, 1.1])]
    close = [_line("bp 0.01", [0.8, 0.9, 1.1]), _line("bp 0.001", [5.0, 7.0, 9.0])]
    assert report.spans_decades(diverging) and not report.spans_decades(close)
    assert not report.spans_decades([_line("a", [0.0, 1.0]), _line("b", [500.0, 600.0])])  # a zero
    import matplotlib.image

    for name, lines in (("log", diverging), ("linear", close)):
        path = report.plot(lines, tmp_path / f"{name}.png", name, "examples", "online squared error")
        assert matplotlib.image.imread(path).shape[2] == 4
    assert "(log scale)" in (tmp_path / "log.svg").read_text()
    assert "(log scale)" not in (tmp_path / "linear.svg").read_text()


def test_report_panels_draws_one_panel_per_sweep_through_the_cli(tmp_path, capsys):
    """`lop-ray report --panels A B C`: the suite view; a sweep that logged nothing is left out."""
    from lop_ray.cli import main

    def rows_of(trial):
        return _rows([1.0, 2.0, 3.0, 4.0], per_step=5000)

    first = logged_sweep(tmp_path / "suite" / "a", SWEEP.format(per_step=5000), rows_of)
    second = logged_sweep(
        tmp_path / "suite" / "b", SWEEP.format(per_step=5000).replace("name: s\n", "name: t\n"), rows_of
    )
    empty = logged_sweep(
        tmp_path / "suite" / "c",
        SWEEP.format(per_step=5000).replace("name: s\n", "name: u\n"),
        lambda t: None,
    )
    assert main(["report", "--panels", str(first), str(second), str(empty)]) == 0
    sheet = tmp_path / "suite" / "panels.png"
    assert sheet.stat().st_size > 1000 and f"figure: {sheet}" in capsys.readouterr().out
    svg = sheet.with_suffix(".svg").read_text()
    assert ">s<" not in svg  # titles are glyph paths; their text is kept as comments
    assert "<!-- s -->" in svg and "<!-- t -->" in svg and "<!-- u -->" not in svg
    assert main(["report", "--panels", str(empty)]) == 2
