"""The MLflow UI answers "BP vs CBP at step size X across seeds" in a few clicks (README, "Compare runs
in MLflow"), checked in a real browser: a small real sweep logs to a real `lop-ray mlflow-server`, and
Debian's headless Chromium, driven by Playwright, walks the runs table, the filter, the compare view
and the chart view grouped by line. The screenshots are kept under test-artifacts/mlflow_ui/.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lop_ray.schema import load_sweep
from lop_ray.sweep import run_sweep
from lop_ray.tracking import trial_run_name
from tests.conftest import TINY_REGRESSION_HEAD, write_sweep
from tests.test_mlflow_server import _free_port

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "mlflow_ui"
LOP_RAY = str(Path(sys.executable).with_name("lop-ray"))
CHROMIUM = "/usr/bin/chromium"
# what Chromium needs on a closed network, as root, without a GPU (shared/env-notes.md)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FILTER = "tags.step_size = '0.01'"

# BP and CBP, each at two step sizes, two seeds each: the filter keeps one step size
SWEEP = (
    TINY_REGRESSION_HEAD
    + """\
seeds: [0, 1]
seeds_per_trial: 2
num_tasks: 2
algorithms:
  - algorithm: bp
    step_size: [0.01, 0.03]
  - algorithm: cbp
    step_size: [0.01, 0.03]
    replacement_rate: 0.01
    maturity_threshold: 20
resources: {{cpu: 0.5}}  # the four trials at once: one round of worker start-ups, not two
storage: {storage}
tracking_uri: {tracking_uri}
"""
)


def _browser_or_fail():
    """Playwright drives the Debian package's Chromium; a machine without either fails, not skips."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: `.venv/bin/pip install -r requirements.txt`")
    return sync_playwright


@pytest.fixture
def mlflow_server(tmp_path):
    """`lop-ray mlflow-server` on loopback, started before Ray so that the two start side by side;
    the test waits for its health check."""
    port = _free_port()
    log = open(tmp_path / "server.log", "a")
    server = subprocess.Popen(
        [LOP_RAY, "mlflow-server", "--dir", str(tmp_path / "store"), "--port", str(port), "--workers", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield server, port, tmp_path / "server.log"
    os.killpg(server.pid, signal.SIGKILL)  # its sqlite store is not needed after the test
    server.wait()
    log.close()


def _wait_healthy(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 240  # ~10 s on a quiet machine; minutes on a loaded 2-core one
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("no answer within 240 s:\n" + log.read_text())


def _shot(page, name: str, shots: Path) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def test_runs_table_filter_compare_and_grouped_chart_in_chromium(tmp_path, mlflow_server, local_ray):
    sync_playwright = _browser_or_fail()
    server, port, log = mlflow_server
    _wait_healthy(server, port, log)
    uri = f"http://127.0.0.1:{port}"
    sweep = load_sweep(
        write_sweep(
            tmp_path / "ui.yaml", SWEEP.format(name="ui", storage=tmp_path / "results", tracking_uri=uri)
        )
    )
    outcome = run_sweep(sweep, quiet=True)
    assert outcome.errors == 0
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("ui").experiment_id
    names = [trial_run_name(t) for t in sweep.trials]
    # what the metric page must show for each run the filter keeps: its last squared error and step
    latest = {
        run.info.run_name: (run.data.metrics["squared_error"], sweep.steps_per_trial - 1)
        for run in client.search_runs([experiment_id], FILTER)
        if run.data.tags["lop_ray.kind"] == "trial"
    }
    assert len(names) == 8 and sorted(latest) == sorted(n for n in names if "step_size=0.01 " in n)

    shots = tmp_path / "shots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(60_000)  # a loaded 2-core machine renders slowly
        try:
            _walk(page, f"{uri}/#/experiments/{experiment_id}/runs", names, latest, shots)
        except Exception:
            _shot(page, "failure", shots)
            raise
        finally:
            browser.close()


def _walk(page, runs_url: str, names: list[str], latest: dict[str, tuple[float, int]], shots: Path) -> None:
    kept = list(latest)
    # 1. the runs table: the sweep's run, expanded, holds every trial's run
    page.goto(runs_url)
    page.get_by_text("matching runs").wait_for()
    if page.get_by_label("Close").count():  # the assistant's side panel takes a third of the width
        page.get_by_label("Close").first.click()
    _expand_sweep_run(page, names[0])
    for name in names:
        page.get_by_text(name, exact=True).wait_for()
    _shot(page, "runs", shots)

    # 2. the filter keeps one step size: both algorithms, both seeds
    search = page.get_by_test_id("search-box")
    search.fill(FILTER)
    search.press("Enter")
    page.wait_for_function("() => location.hash.includes('searchFilter=tags.step_size')")
    removed = [n for n in names if n not in kept]
    page.get_by_text(removed[0], exact=True).wait_for(state="detached")
    _expand_sweep_run(page, kept[0])
    for name in kept:
        page.get_by_text(name, exact=True).wait_for()
    assert all(page.get_by_text(n, exact=True).count() == 0 for n in removed)
    _shot(page, "filtered", shots)
    filtered_url = page.url

    # 3. select the kept runs and open Compare: their names, params and metrics side by side
    rows = page.locator('.ag-pinned-left-cols-container [role="row"]')
    for name in kept:
        rows.filter(has=page.get_by_text(name, exact=True)).locator('input[type="checkbox"]').first.check()
    page.get_by_role("button", name="Compare").click()
    page.get_by_text(f"Comparing {len(kept)} Runs").wait_for()
    for name in kept:
        page.get_by_text(name, exact=True).first.wait_for()
    _shot(page, "compare", shots)

    # 4. the compare view's squared_error: one curve per run over the steps, and each run's last value
    page.locator('a[href*="metric"]', has_text="squared_error").first.click()
    for name, (value, step) in latest.items():
        page.get_by_text(f"{name} (squared_error)", exact=True).wait_for()
        row = page.get_by_role("row").filter(has=page.get_by_text(name, exact=True))
        assert f"{value!r} (step={step})" in row.first.inner_text(), (name, value, step)
    _shot(page, "metric", shots)

    # 5. grouped by line, the chart view: per-step curves of each line, mean and range over its seeds
    page.go_back()  # the compare view, then the filtered runs table: no reload of the app
    page.go_back()
    page.wait_for_url(filtered_url)
    page.get_by_text("matching runs").wait_for()
    page.get_by_role("button", name="Group by").click()
    page.get_by_role("menuitemcheckbox", name="line", exact=True).first.click()
    page.keyboard.press("Escape")
    page.locator('label:has(input[name="runs-view-mode"][value="CHART"])').click()
    # the runs log more metrics than fit one screen, and charts out of view are not drawn: filter
    page.get_by_placeholder("Search metric charts").first.fill("squared_error")
    for line in ("bp (step_size=0.01)", "cbp (step_size=0.01)"):
        page.get_by_text(f"{line} (squared_error)", exact=True).wait_for()
    page.get_by_text("squared_error", exact=True).first.wait_for()
    page.wait_for_timeout(1000)  # the curves draw after their legend
    _shot(page, "chart", shots)


def _expand_sweep_run(page, child: str) -> None:
    """Trial runs sit folded under their parent, the sweep's run; unfold it unless it is open."""
    sweep_row = page.locator('.ag-pinned-left-cols-container [role="row"]').filter(
        has=page.get_by_role("link", name="ui", exact=True)
    )
    sweep_row.wait_for()
    if page.get_by_text(child, exact=True).count() == 0:
        sweep_row.locator('[col-id="attributes.`Run Name`"] button').first.click()
