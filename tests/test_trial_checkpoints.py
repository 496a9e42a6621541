"""Which checkpoint directories on storage count as complete (lop_ray/trial_checkpoints.py)."""

from __future__ import annotations

import pyarrow.fs

from lop_ray.trial_checkpoints import CHECKPOINT_FILE, MANIFEST_FILE, stored_checkpoints, write_manifest


def _checkpoint(trial_dir, index: int, steps_done: int, truncate: int = 0, manifest: bool = True):
    directory = trial_dir / f"checkpoint_{index:06d}"
    directory.mkdir(parents=True)
    (directory / CHECKPOINT_FILE).write_bytes(b"x" * 1000)
    if manifest:
        write_manifest(directory, steps_done)
    if truncate:
        (directory / CHECKPOINT_FILE).write_bytes(b"x" * (1000 - truncate))
    return directory


def test_a_checkpoint_is_complete_only_with_its_manifest_and_full_state(tmp_path):
    trial_dir = tmp_path / "trial"
    _checkpoint(trial_dir, 3, steps_done=4)
    _checkpoint(trial_dir, 4, steps_done=5, truncate=1)  # copy to storage cut short
    _checkpoint(trial_dir, 5, steps_done=6, manifest=False)  # manifest not copied yet
    (trial_dir / "checkpoint_000006").mkdir()  # empty
    (trial_dir / "checkpoint_tmp").mkdir()  # not Tune's naming
    (trial_dir / MANIFEST_FILE).write_text("{}")

    found = stored_checkpoints(pyarrow.fs.LocalFileSystem(), str(trial_dir))

    assert [(c.index, c.steps_done) for c in found] == [(3, 4), (4, None), (5, None), (6, None)]
    assert [c.complete for c in found] == [True, False, False, False]


def test_a_trial_that_never_started_has_no_checkpoints(tmp_path):
    assert stored_checkpoints(pyarrow.fs.LocalFileSystem(), str(tmp_path / "missing")) == []


def test_a_garbled_manifest_marks_the_checkpoint_incomplete(tmp_path):
    directory = _checkpoint(tmp_path, 0, steps_done=1)
    (directory / MANIFEST_FILE).write_text('{"state_bytes": 10')
    assert not stored_checkpoints(pyarrow.fs.LocalFileSystem(), str(tmp_path))[0].complete
