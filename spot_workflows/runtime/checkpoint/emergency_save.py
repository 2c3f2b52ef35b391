"""The emergency save: one save after a stop request, timed against the termination notice's
deadline and reported. A save that fails or misses the deadline is logged as an ERROR and its
:class:`EmergencySaveReport` written (best-effort) to ``emergency-<step>.json`` in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC

from pydantic import BaseModel

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

log = logging.getLogger("spot_workflows.checkpoint")


class EmergencySaveReport(BaseModel):
    """How the save after a termination notice went; written to the store when it went badly."""

    step: int
    started_at: float
    finished_at: float
    deadline: float | None
    met_deadline: bool | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.met_deadline is not False


def timed_emergency_save(
    store: CheckpointStore,
    step: int,
    save: Callable[[], object],
    *,
    notice: TerminationNotice | None,
    wall_clock: Callable[[], float],
) -> EmergencySaveReport:
    """Run ``save()`` as the emergency save of ``step``, timed with ``wall_clock`` against the
    deadline of ``notice``; never raises. A bad report is logged and written to ``store``."""
    deadline = None
    if notice is not None and notice.deadline is not None:
        when = notice.deadline
        deadline = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    started = wall_clock()
    error = None
    try:
        save()
    except Exception as exc:  # the report must carry any failure, whatever it is
        error = f"{type(exc).__name__}: {exc}"
    finished = wall_clock()
    report = EmergencySaveReport(
        step=step,
        started_at=started,
        finished_at=finished,
        deadline=deadline,
        met_deadline=None if deadline is None else finished <= deadline,
        error=error,
    )
    if report.ok:
        log.info("emergency checkpoint step %d saved in %.2fs", step, finished - started)
        return report
    what = error or f"finished {finished - (deadline or finished):.2f}s after the deadline"
    kind = notice.kind if notice else NoticeKind.SIGTERM
    log.error(
        "emergency checkpoint step %d (%s) went wrong: %s; report in %s/emergency-%d.json",
        step,
        kind,
        what,
        store.uri,
        step,
    )
    try:
        store.write_atomic(f"emergency-{step}.json", report.model_dump_json().encode())
    except Exception as exc:  # best-effort: the ERROR log above already carries the report
        log.error("could not write emergency report for step %d: %s", step, exc)
    return report
