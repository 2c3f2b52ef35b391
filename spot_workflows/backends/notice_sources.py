"""Where orchestrator-side termination notices come from, per backend.

* local: the local cloud's events file (:class:`~spot_workflows.backends.local.events.LocalEventSource`);
* AWS: the bootstrap's EventBridge -> SQS queue (:class:`AwsNoticeSource`);
* GCP: preemption events of the watched step's Batch jobs (:class:`GcpNoticeSource`).

Each source's ``poll()`` returns the notices that arrived since the last poll. Sources that can
tie notices to steps only through the steps' jobs also have ``track_attempts(step_key,
attempts)``, fed from the step's ledger by :class:`~spot_workflows.termination.TerminationWatch`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from spot_workflows.core.outcomes import Attempt, TerminationNotice


class NoticeSource(Protocol):
    """Where termination notices come from. Sources that can only tie notices to steps they were
    told about also have ``track_attempts(step_key, attempts)`` (fed from the step's ledger)."""

    def poll(self) -> list[TerminationNotice]:
        """Notices that arrived since the last poll."""
        ...


def _after(notice: TerminationNotice, since: float | None) -> bool:
    return since is None or notice.seen_at is None or notice.seen_at.timestamp() >= since


class AwsNoticeSource:
    """The bootstrap's EventBridge -> SQS queue, as termination notices (consumes messages)."""

    def __init__(self, consumer: Any, *, since: float | None) -> None:
        self.consumer = consumer
        self.since = since

    def track_attempts(self, step_key: str, attempts: Iterable[Attempt]) -> None:
        self.consumer.index.track_attempts(step_key, attempts)

    def poll(self) -> list[TerminationNotice]:
        out = []
        for event in self.consumer.poll(max_messages=10, wait_s=0):
            notice = event if isinstance(event, TerminationNotice) else event.notice
            if notice is not None and _after(notice, self.since):
                out.append(notice)
        return out


class GcpNoticeSource:
    """Preemption events of the watched step's GCP Batch jobs (polled with GetJob)."""

    def __init__(self, watcher: Any, *, since: float | None) -> None:
        self.watcher = watcher
        self.since = since

    def track_attempts(self, step_key: str, attempts: Iterable[Attempt]) -> None:
        for a in attempts:
            if a.job_id and a.live:
                self.watcher.watch(a.job_id, step_key=step_key)

    def poll(self) -> list[TerminationNotice]:
        notices, _ = self.watcher.poll()
        return [n for n in notices if _after(n, self.since)]
