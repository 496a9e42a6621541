"""Trial checkpoints that survive a killed driver.

Tune records each trial's checkpoints in its experiment state, which it writes at most every
`TUNE_GLOBAL_CHECKPOINT_S` (≥ 10 s by default), while trials keep checkpointing and Tune keeps
deleting all but the newest `num_to_keep`. A driver killed between two writes leaves a state that
names checkpoints already deleted; Ray 2.60 then refuses to restore those trials ("does not exist
on storage anymore") and would crash deleting them later. So before a trial's actor starts, the
driver reconciles Tune's record with what storage really holds: it forgets checkpoints that are
gone, adopts the newest complete one (which is never older than the recorded one, so less work is
redone), deletes the half-copied and superseded ones, and numbers the next checkpoint past every
directory on storage.

"Complete" is decided by a manifest written next to `state.pt`: Tune copies a checkpoint to
storage file by file, and a copy cut short leaves a `state.pt` shorter than the manifest says. An
incomplete checkpoint is never restored, even where Tune's record names it: the trial falls back to
its newest complete one, and the driver logs a warning saying which and why.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs
from ray.tune import Callback, Checkpoint
from ray.tune.result import TRAINING_ITERATION

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def write_manifest(checkpoint_dir: str | Path, steps_done: int) -> None:
    """Called after `state.pt` is fully written in the trainable's local checkpoint directory."""
    checkpoint_dir = Path(checkpoint_dir)
    size = (checkpoint_dir / CHECKPOINT_FILE).stat().st_size
    manifest = {"state_bytes": size, "steps_done": steps_done}
    (checkpoint_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


@dataclass(frozen=True)
class StoredCheckpoint:
    """A `checkpoint_NNNNNN` directory on the sweep's storage."""

    index: int
    path: str
    steps_done: int | None  # None: incomplete (no manifest, or `state.pt` shorter than it says)

    @property
    def complete(self) -> bool:
        return self.steps_done is not None


def stored_checkpoints(fs: pyarrow.fs.FileSystem, trial_path: str) -> list[StoredCheckpoint]:
    """Every checkpoint directory of one trial, in index order, each checked for completeness."""
    if fs.get_file_info(trial_path).type != pyarrow.fs.FileType.Directory:
        return []  # the trial has not started yet
    found = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(trial_path)):
        match = _CHECKPOINT_DIR.match(info.base_name)
        if info.type == pyarrow.fs.FileType.Directory and match:
            found.append(StoredCheckpoint(int(match.group(1)), info.path, _complete_steps(fs, info.path)))
    return sorted(found, key=lambda c: c.index)


def _complete_steps(fs: pyarrow.fs.FileSystem, path: str) -> int | None:
    manifest_info, state_info = fs.get_file_info([f"{path}/{MANIFEST_FILE}", f"{path}/{CHECKPOINT_FILE}"])
    if manifest_info.type != pyarrow.fs.FileType.File or state_info.type != pyarrow.fs.FileType.File:
        return None
    try:
        with fs.open_input_stream(manifest_info.path) as stream:
            manifest = json.loads(stream.read())
        if manifest["state_bytes"] != state_info.size:
            return None
        return int(manifest["steps_done"])
    except (ValueError, KeyError, TypeError):
        return None


def reconcile_trial_checkpoints(trial) -> None:
    """Make Tune's record of `trial`'s checkpoints agree with its storage (see the module docstring).

    Touches Tune's private checkpoint bookkeeping (`_CheckpointManager`, `StorageContext`), pinned
    with Ray in requirements.txt and exercised by tests/test_resume.py.
    """
    storage = trial.storage
    fs = storage.storage_filesystem
    on_storage = stored_checkpoints(fs, storage.trial_fs_path)
    by_path = {c.path: c for c in on_storage}
    manager = trial.run_metadata.checkpoint_manager

    # a recorded checkpoint that is gone, or on storage but incomplete (truncated), cannot be restored
    kept = [r for r in manager._checkpoint_results if _complete(r, by_path)]
    latest = manager._latest_checkpoint_result
    complete = [c for c in on_storage if c.complete]
    newest = max(complete, key=lambda c: (c.steps_done, c.index), default=None)
    if latest is not None and not _complete(latest, by_path):
        latest = kept[-1] if kept else None
    if newest is not None and (latest is None or _steps_of(latest, by_path) < newest.steps_done):
        latest = next((r for r in kept if r.checkpoint.path == newest.path), None)
        if latest is None:
            latest = _training_result(newest, fs)
            kept.append(latest)
        logger.info("%s: resuming from %s (%d steps done)", trial, newest.path, newest.steps_done)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = latest
    if on_storage and not on_storage[-1].complete:  # e.g. truncated by a crash while it was copied
        chosen = by_path[latest.checkpoint.path] if latest is not None else None
        logger.warning(
            "%s: newest checkpoint %s is incomplete (%s); falling back to %s",
            trial,
            on_storage[-1].path,
            _incomplete_reason(fs, on_storage[-1].path),
            f"{chosen.path} ({chosen.steps_done} steps done)" if chosen else "the start (no complete one)",
        )

    keep_paths = {r.checkpoint.path for r in kept}
    for stale in on_storage:
        if stale.path not in keep_paths:
            fs.delete_dir(stale.path)
    if on_storage:
        storage.current_checkpoint_index = max(storage.current_checkpoint_index, on_storage[-1].index)
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()


def _complete(result, by_path: dict[str, StoredCheckpoint]) -> bool:
    stored = by_path.get(result.checkpoint.path)
    return stored is not None and stored.complete


def _steps_of(result, by_path: dict[str, StoredCheckpoint]) -> int:
    return by_path[result.checkpoint.path].steps_done


def _incomplete_reason(fs: pyarrow.fs.FileSystem, path: str) -> str:
    manifest_info, state_info = fs.get_file_info([f"{path}/{MANIFEST_FILE}", f"{path}/{CHECKPOINT_FILE}"])
    if state_info.type != pyarrow.fs.FileType.File:
        return f"no {CHECKPOINT_FILE}"
    if manifest_info.type != pyarrow.fs.FileType.File:
        return f"no {MANIFEST_FILE}"
    try:
        with fs.open_input_stream(manifest_info.path) as stream:
            expected = json.loads(stream.read())["state_bytes"]
        return f"{CHECKPOINT_FILE} has {state_info.size} of {expected} bytes"
    except (ValueError, KeyError, TypeError):
        return f"unreadable {MANIFEST_FILE}"


def _training_result(stored: StoredCheckpoint, fs: pyarrow.fs.FileSystem):
    from ray.train._internal.session import _TrainingResult

    checkpoint = Checkpoint(stored.path, filesystem=fs)
    return _TrainingResult(checkpoint=checkpoint, metrics={TRAINING_ITERATION: stored.steps_done})


class ReconcileCheckpoints(Callback):
    """Runs `reconcile_trial_checkpoints` before a trial's actor starts (Tune calls `on_step_begin`
    ahead of starting actors in every controller step): once per trial per driver, and again each
    time Tune retries a failed trial. The retry matters as much as the restart: a checkpoint upload
    cut short by a storage outage (pyarrow drops the error of the last part it writes on close) is
    still recorded by Tune as the trial's newest, and restoring it would fail every retry until
    `max_failures` is spent. Storage that does not answer yet leaves the trial to Tune's record,
    and it is reconciled at its next retry."""

    def __init__(self) -> None:
        self._reconciled: set[str] = set()

    def __getstate__(self) -> dict:
        # pickled with the Tuner: a restored driver must reconcile every trial again
        return {"_reconciled": set()}

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        for trial in trials:
            if trial.trial_id in self._reconciled or trial.status not in ("PENDING", "PAUSED", "ERROR"):
                continue
            self._reconciled.add(trial.trial_id)  # once per start, whatever storage answers
            try:
                reconcile_trial_checkpoints(trial)
            except OSError as error:  # storage unreachable: Tune's record stands until a retry
                logger.warning("%s: could not check its checkpoints on storage (%s)", trial, error)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._reconciled.discard(trial.trial_id)
