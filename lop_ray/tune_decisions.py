"""A trial's pending Tune decisions end with the actor they were made for.

Ray Tune 2.60 keeps a decision (continue, pause, stop) per trial id while that trial's actor is
saving a checkpoint, and acts on it when the save returns. A trial whose actor dies during a save
(SIGKILL, a lost node) is stopped with a STOP decision cached under its id that no save will ever
consume; the controller's experiment state carries it (`runner_data._cached_trial_decisions`), so
`lop-ray resume` restored it, and the resumed trial ran one step, saved, and was stopped, short of
its last step, with no error: its MLflow runs ended KILLED and the resume reported success (the slow
fault test caught it on CI one run in three). The same holds for a retry within the driver.

A freshly started actor has no save in flight and no result pending, so when one starts for a
trial, whatever decisions Tune still holds for that trial were made for a previous actor and are
dropped. Touches Tune's private controller (pinned with Ray in requirements.txt), as
`trial_checkpoints` does; tests/test_resume.py plants the stale decision and checks the resume.
"""

from __future__ import annotations

from ray.tune.execution.tune_controller import TuneController

_PATCHED = "_lop_ray_forgets_stale_decisions"


def forget_decisions_when_an_actor_starts() -> None:
    """Install the rule in Tune's controller (idempotent)."""
    started = TuneController._actor_started
    if getattr(started, _PATCHED, False):
        return

    def _actor_started(self: TuneController, tracked_actor, log: str = "STARTED"):
        trial = self._actor_to_trial[tracked_actor]
        self._cached_trial_decisions.pop(trial.trial_id, None)
        self._queued_trial_decisions.pop(trial.trial_id, None)
        return started(self, tracked_actor, log)

    setattr(_actor_started, _PATCHED, True)
    TuneController._actor_started = _actor_started
