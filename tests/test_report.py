"""The figure's data: binning per seed, mean ± SE across seeds, windows; tested on the numbers."""

from __future__ import annotations

import json
import math

import numpy as np

from lop_ray import report


def _write_trial(root, name, label, seed, values, per_step=10_000, varying=None):
    trial_dir = root / name
    trial_dir.mkdir()
    trial = {"label": label, "seed": seed, "varying": varying or {}}
    (trial_dir / "params.json").write_text(json.dumps({"trial": trial}))
    rows = [
        {"step_index": i, "examples": (i + 1) * per_step, "squared_error": v} for i, v in enumerate(values)
    ]
    rows.insert(2, dict(rows[1]))  # a resumed trial may report a step twice
    (trial_dir / "result.json").write_text("\n".join(json.dumps(r) for r in rows))


def test_bins_per_seed_then_mean_and_standard_error(tmp_path):
    _write_trial(tmp_path, "a0", "bp", 0, [1, 3, 5, 7, 9, 11, 100])  # the 7th step is a partial bin
    _write_trial(tmp_path, "a1", "bp", 1, [3, 5, 7, 9, 11, 13])
    _write_trial(tmp_path, "b0", "cbp", 0, [1, 1, 1, 1], varying={"replacement_rate": 0.01})

    aggregates = {
        a.line: a
        for a in report.aggregate(report.load_trial_records(tmp_path), "squared_error", "examples", 20_000)
    }

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


def test_headline_figure_falls_back_to_steps_for_short_runs(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    _write_trial(results, "a0", "bp", 0, [1.0, 2.0, 3.0], per_step=150)
    path, aggregates = report.headline_figure(results, "slowly_changing_regression", "t")
    assert path == results / "squared_error.png" and path.stat().st_size > 1000
    assert list(aggregates[0].mean) == [1.0, 2.0, 3.0]
