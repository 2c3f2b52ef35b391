"""One check of "has the watched step been told to go away?", shared by every engine: the Airflow
sensor and its trigger, and the Prefect ``wait_for_termination`` task.

A :class:`TerminationWatch` combines two sources:

* a notice source (local events file, AWS SQS consumer, GCP watcher): interruption warnings,
  rebalance recommendations, preempted jobs, filtered by step key, queue and kind;
* optionally the watched step's ledger: a PREEMPTED attempt that ended after ``since`` is a
  preempted job on any backend, and a step with no live attempt whose last attempt was not
  preempted has finished -- nothing more will come, so the watch ends.

The ledger is read *before* the notices: a notice always precedes the end of its job, so a
finished ledger plus the notices read after it cannot miss a notice of that step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from spot_workflows.backends.notice_sources import NoticeSource
from spot_workflows.core.outcomes import NoticeKind, Outcome, TerminationNotice
from spot_workflows.errors import ConfigError
from spot_workflows.ledger import LEDGER_PATH, Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

DEFAULT_KINDS = ("INTERRUPTION", "REBALANCE", "PREEMPTED")

__all__ = [
    "DEFAULT_KINDS",
    "NoticeSource",
    "TerminationWatch",
    "normalize_kinds",
    "payload_notice",
]


def normalize_kinds(kinds: Iterable[str] | str) -> tuple[str, ...]:
    """Kinds as a sorted tuple of :class:`NoticeKind` names (stable for serialization)."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    out = set()
    for kind in kinds:
        name = str(kind).upper()
        if name not in NoticeKind.__members__:
            raise ConfigError(
                f"unknown notice kind {kind!r}; choose from {', '.join(NoticeKind.__members__)}"
            )
        out.add(name)
    if not out:
        raise ConfigError("kinds must name at least one notice kind, e.g. ['INTERRUPTION']")
    return tuple(sorted(out))


def _payload(notice: TerminationNotice) -> dict[str, Any]:
    return {
        "terminated": True,
        "kind": notice.kind.value,
        "source": notice.source,
        "step_key": notice.step_key,
        "job_id": notice.job_id,
        "notice": notice.model_dump(mode="json"),
    }


def payload_notice(payload: dict[str, Any]) -> TerminationNotice | None:
    """The notice a ``terminated: True`` payload of :meth:`TerminationWatch.check` carries."""
    if not payload.get("terminated") or not payload.get("notice"):
        return None
    return TerminationNotice.model_validate(payload["notice"])


class TerminationWatch:
    """Polls a notice source (and optionally the watched step's ledger) for one step or queue.

    :param source: where notices come from (``settings.notice_source(since=...)``).
    :param step_key: only notices of this step (None: any step).
    :param job_queue: only notices about jobs of this queue (AWS job queue name or ARN).
    :param kinds: notice kinds to report (:func:`normalize_kinds`).
    :param since: epoch seconds; preempted attempts that ended before it are not reported.
    :param checkpoint_uri: the watched step's checkpoint URI: its ledger reports preempted
        attempts and says when the step finished.
    :param store: the watched step's checkpoint store, when it needs credentials (instead of
        ``checkpoint_uri``).
    """

    def __init__(
        self,
        *,
        source: NoticeSource,
        step_key: str | None,
        job_queue: str | None,
        kinds: Iterable[str],
        since: float,
        checkpoint_uri: str | None = None,
        store: CheckpointStore | None = None,
    ) -> None:
        if (checkpoint_uri or store is not None) and not step_key:
            raise ConfigError("watching a step's ledger (checkpoint_uri) needs its step_key too")
        self.source = source
        self.step_key = step_key
        self.job_queue = job_queue
        self.kinds = set(normalize_kinds(kinds))
        self.since = since
        if store is None and checkpoint_uri:
            store = CheckpointStore(checkpoint_uri)
        self.store = store
        self._reported: set[int] = set()

    def matches(self, notice: TerminationNotice) -> bool:
        if notice.kind.value not in self.kinds:
            return False
        if self.step_key and notice.step_key != self.step_key:
            return False
        if self.job_queue:
            queue = str(notice.detail.get("queue") or notice.detail.get("jobQueue") or "")
            if queue != self.job_queue and not queue.endswith(f"/{self.job_queue}"):
                return False
        return True

    def _ledger(self) -> tuple[list[dict[str, Any]], str | None]:
        """(preempted-attempt payloads not yet reported, finished reason or None)."""
        if self.store is None or self.store.read(LEDGER_PATH) is None:
            return [], None
        ledger = Ledger.open(self.store, self.step_key or "")
        track = getattr(self.source, "track_attempts", None)
        if track is not None:  # AWS / GCP sources tie events to steps through the attempts
            track(ledger.step_key, ledger.attempts)
        out = []
        for a in ledger.attempts:
            if (
                a.outcome is Outcome.PREEMPTED
                and "PREEMPTED" in self.kinds
                and (a.ended_at or 0) >= self.since
                and a.number not in self._reported
            ):
                self._reported.add(a.number)
                notice = TerminationNotice(
                    kind=NoticeKind.PREEMPTED,
                    source="ledger",
                    job_id=a.job_id,
                    instance_id=a.instance_id,
                    step_key=ledger.step_key,
                    detail={"attempt": a.number, "capacity": a.capacity.value, "reason": a.reason},
                )
                out.append(_payload(notice))
        attempts = ledger.attempts
        last = attempts[-1] if attempts else None
        if last is not None and not last.live and last.outcome is not Outcome.PREEMPTED:
            return out, f"step {ledger.step_key} finished: attempt {last.number} {last.outcome}"
        return out, None

    def check(self) -> list[dict[str, Any]]:
        """Payloads of what happened since the last check; the last is ``terminated: False``
        when the watched step finished without (further) notices."""
        from_ledger, finished = self._ledger()
        payloads = [_payload(n) for n in self.source.poll() if self.matches(n)]
        if not payloads:
            payloads = from_ledger
        if not payloads and finished is not None:
            payloads = [{"terminated": False, "step_key": self.step_key, "reason": finished}]
        return payloads
