"""The local backend's event log: a JSON-lines file of market events, and a reader for it.

:class:`~spot_workflows.backends.local.LocalBackend` appends one line per market event to its
``events_path`` (when set): ``notice`` (the interruption warning), ``sigterm`` / ``sigkill`` (the
reclaim itself). Orchestrator-side watchers (the Airflow termination sensor, bench scripts) read
the file with :class:`LocalEventSource` and get :class:`TerminationNotice` values, the same type the
AWS and GCP event consumers produce. Any process may append (``O_APPEND`` writes of one short
line), so a test or an operator can inject an event with :func:`append_event`.

Line format: ``{"event": "notice", "at": 1764000000.0, "job_id": "local-...", "job_name": "...",
"step_key": "...", "capacity": "SPOT", "instance_id": "i-...", "deadline": 1764000002.0}``;
``event`` may also be ``rebalance`` or ``preempted``. Unknown events are ignored.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice

EVENT_KINDS = {
    "notice": NoticeKind.INTERRUPTION,
    "rebalance": NoticeKind.REBALANCE,
    "sigterm": NoticeKind.PREEMPTED,
    "sigkill": NoticeKind.PREEMPTED,
    "preempted": NoticeKind.PREEMPTED,
}


def append_event(path: str | Path, event: dict) -> None:
    """Append one event line (atomic for short lines: a single ``O_APPEND`` write)."""
    line = (json.dumps(event, sort_keys=True) + "\n").encode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _when(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(float(value), tz=UTC)


def to_notice(event: dict) -> TerminationNotice | None:
    """The notice an event line stands for, or None for events that are not about termination."""
    kind = EVENT_KINDS.get(str(event.get("event")))
    if kind is None:
        return None
    return TerminationNotice(
        kind=kind,
        source="local",
        action="terminate" if kind is not NoticeKind.REBALANCE else None,
        deadline=_when(event.get("deadline")),
        seen_at=_when(event.get("at")),
        instance_id=event.get("instance_id"),
        job_id=event.get("job_id"),
        step_key=event.get("step_key"),
        detail=event,
    )


class LocalEventSource:
    """Tails a local events file: each :meth:`poll` returns the notices appended since the last.

    ``since`` (epoch seconds) drops events that happened before it, so a watcher started late
    still sees what happened during its run but not what happened in earlier runs.
    """

    def __init__(self, *, path: str | Path, since: float | None = None) -> None:
        self.path = Path(path)
        self.since = since
        self._offset = 0

    def poll(self) -> list[TerminationNotice]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a half-written last line is read next time
        self._offset += end
        notices = []
        for raw in data[:end].splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # a torn or foreign line never stops the watcher
            if not isinstance(event, dict):
                continue
            at = event.get("at")
            if self.since is not None and isinstance(at, int | float) and at < self.since:
                continue
            notice = to_notice(event)
            if notice is not None:
                notices.append(notice)
        return notices
