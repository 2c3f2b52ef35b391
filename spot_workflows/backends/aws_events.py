"""EventBridge -> SQS consumer: termination notices and Batch job outcomes, tied to steps.

``spot-workflows aws bootstrap`` routes three EventBridge event types to one SQS queue:

==========================================  ==============================================
``EC2 Spot Instance Interruption Warning``  :class:`TerminationNotice` ``INTERRUPTION``, deadline =
                                            event ``time`` + 2 min, ``action`` from the detail
``EC2 Instance Rebalance Recommendation``   :class:`TerminationNotice` ``REBALANCE`` (advisory)
``Batch Job State Change``                  :class:`JobEvent`: the ``detail`` (shaped like a
                                            DescribeJobs job) classified with the core classifier
==========================================  ==============================================

Tying events to steps (a :class:`StepIndex` built from the ledgers' attempts):

- Batch events by job id; failing that by the ``SPOT_STEP_KEY`` in the job's container
  environment or its ``spot-workflows:step`` tag (every job this package submits has both).
- EC2 events by instance id, only where an attempt records its ``instance_id`` (the AWS backend
  fills it from ECS for running jobs). What cannot be mapped comes back with ``step_key=None``:
  EC2 events for instances no tracked attempt ran on (other workloads, or an attempt whose
  instance was never observed), and Batch events for jobs not submitted by spot-workflows.

Delivery rule: a message is deleted once it was parsed and (when a ``handler`` is given) the
handler returned. A handler that raises leaves the message for SQS to redeliver. A malformed
message (not JSON, not an EventBridge envelope, unknown ``detail-type``, a detail without its
ids) is logged, counted in :attr:`EventConsumer.stats` and deleted: it can never become
valid, and leaving it would redeliver it forever. The consumer never raises on a message.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from spot_workflows.backends.aws_batch import TAG_STEP
from spot_workflows.backends.aws_errors import AwsCaller, RetryPolicy, make_client
from spot_workflows.backends.aws_jobs import env_of, observation_from_job
from spot_workflows.core.outcomes import (
    Attempt,
    NoticeKind,
    Observation,
    Outcome,
    TerminationNotice,
)
from spot_workflows.errors import SpotWorkflowsError

log = logging.getLogger("spot_workflows.aws.events")

INTERRUPTION = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
JOB_STATE = "Batch Job State Change"
DETAIL_TYPES = (INTERRUPTION, REBALANCE, JOB_STATE)
SPOT_NOTICE_WINDOW = timedelta(minutes=2)
SOURCE = "eventbridge"


class MalformedEvent(SpotWorkflowsError, ValueError):
    """A message that is not one of the three EventBridge events this package consumes."""


class JobEvent(BaseModel):
    """A ``Batch Job State Change`` tied (when possible) to a step."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    job_name: str | None = None
    job_queue: str | None = None
    step_key: str | None = None
    time: datetime | None = None
    observation: Observation

    @property
    def notice(self) -> TerminationNotice | None:
        """An orchestrator-side PREEMPTED notice when the job was reclaimed, else None."""
        if self.observation.outcome is not Outcome.PREEMPTED:
            return None
        return TerminationNotice(
            kind=NoticeKind.PREEMPTED,
            source=SOURCE,
            seen_at=self.time,
            instance_id=self.observation.instance_id,
            job_id=self.job_id,
            step_key=self.step_key,
            detail={"reason": self.observation.reason},
        )


Event = TerminationNotice | JobEvent


class StepIndex:
    """Which step a job id or an instance id belongs to."""

    def __init__(self) -> None:
        self._jobs: dict[str, str] = {}
        self._instances: dict[str, tuple[str, str | None]] = {}

    def track(
        self, step_key: str, *, job_id: str | None = None, instance_id: str | None = None
    ) -> None:
        if job_id:
            self._jobs[job_id] = step_key
        if instance_id:
            self._instances[instance_id] = (step_key, job_id)

    def track_attempts(self, step_key: str, attempts: Iterable[Attempt]) -> None:
        """Index a ledger's attempts (job ids, and instance ids where recorded)."""
        for a in attempts:
            self.track(step_key, job_id=a.job_id, instance_id=a.instance_id)

    def step_for_job(self, job_id: str) -> str | None:
        return self._jobs.get(job_id)

    def for_instance(self, instance_id: str) -> tuple[str, str | None] | None:
        return self._instances.get(instance_id)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_event(
    envelope: Any,
    *,
    index: StepIndex | None = None,
    received_at: datetime | None = None,
    noticed_jobs: Iterable[str] = (),
) -> Event:
    """One EventBridge envelope -> notice or job event; :class:`MalformedEvent` otherwise.

    Messages are untrusted input: whatever their shape, nothing but MalformedEvent escapes.
    """
    try:
        return _parse_event(envelope, index, received_at, noticed_jobs)
    except MalformedEvent:
        raise
    except Exception as exc:  # junk values: wrong types, dates at the end of time, ...
        kind = envelope.get("detail-type") if isinstance(envelope, Mapping) else None
        raise MalformedEvent(f"unusable {kind!r} event: {type(exc).__name__}: {exc}") from exc


def _parse_event(
    envelope: Any,
    index: StepIndex | None,
    received_at: datetime | None,
    noticed_jobs: Iterable[str],
) -> Event:
    if not isinstance(envelope, Mapping):
        raise MalformedEvent(f"not a JSON object: {type(envelope).__name__}")
    kind, detail = envelope.get("detail-type"), envelope.get("detail")
    if kind not in DETAIL_TYPES:
        raise MalformedEvent(f"unknown detail-type {kind!r}")
    if not isinstance(detail, Mapping):
        raise MalformedEvent(f"{kind} event without a detail object")
    index = index or StepIndex()
    when = _time(envelope.get("time")) or received_at
    if kind == JOB_STATE:
        job_id, status = detail.get("jobId"), detail.get("status")
        if not isinstance(job_id, str) or not job_id or not isinstance(status, str):
            raise MalformedEvent("Batch Job State Change without jobId/status")
        tags = detail.get("tags") if isinstance(detail.get("tags"), Mapping) else {}
        step = (
            index.step_for_job(job_id) or env_of(detail).get("SPOT_STEP_KEY") or tags.get(TAG_STEP)
        )
        return JobEvent(
            job_id=job_id,
            job_name=detail.get("jobName") if isinstance(detail.get("jobName"), str) else None,
            job_queue=detail.get("jobQueue") if isinstance(detail.get("jobQueue"), str) else None,
            step_key=step,
            time=when,
            observation=observation_from_job(detail, notice_seen=job_id in set(noticed_jobs)),
        )
    instance = detail.get("instance-id")
    if not isinstance(instance, str) or not instance.startswith("i-"):
        raise MalformedEvent(f"{kind} event without an instance-id")
    step, job = index.for_instance(instance) or (None, None)
    interruption = kind == INTERRUPTION
    action = detail.get("instance-action")
    return TerminationNotice(
        kind=NoticeKind.INTERRUPTION if interruption else NoticeKind.REBALANCE,
        source=SOURCE,
        action=action if isinstance(action, str) else None,
        deadline=when + SPOT_NOTICE_WINDOW if interruption and when else None,
        seen_at=when,
        instance_id=instance,
        job_id=job,
        step_key=step,
        detail=dict(detail),
    )


@dataclass
class ConsumerStats:
    received: int = 0
    parsed: int = 0
    unmapped: int = 0  # parsed but tied to no step
    malformed: int = 0
    handler_errors: int = 0
    deleted: int = 0


class EventConsumer:
    """Receives from the bootstrap's SQS queue and turns messages into :data:`Event` objects."""

    def __init__(
        self,
        *,
        queue_url: str,
        index: StepIndex | None = None,
        sqs_client: Any = None,
        session: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue_url = queue_url
        self.index = index or StepIndex()
        self.sqs = sqs_client or make_client(
            "sqs", session=session, region=region, endpoint_url=endpoint_url
        )
        self.call = AwsCaller(retry=retry, sleep=sleep, region=region)
        self.clock = clock
        self.stats = ConsumerStats()
        self._noticed_jobs: set[str] = set()

    def poll(
        self,
        *,
        max_messages: int = 10,
        wait_s: int = 0,
        handler: Callable[[Event], None] | None = None,
    ) -> list[Event]:
        """Receive up to ``max_messages`` (1..10), waiting up to ``wait_s`` (0..20) seconds."""
        resp = self.call(
            self.sqs,
            "receive_message",
            what=f"SQS queue {self.queue_url}",
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(10, max_messages)),
            WaitTimeSeconds=max(0, min(20, wait_s)),
            MessageSystemAttributeNames=["SentTimestamp"],
        )
        events: list[Event] = []
        done: list[dict[str, str]] = []
        for msg in resp.get("Messages", []):
            self.stats.received += 1
            event = self._parse(msg)
            if event is not None and handler is not None:
                try:
                    handler(event)
                except Exception:
                    self.stats.handler_errors += 1
                    log.exception(
                        "event handler failed; message %s left for redelivery", msg.get("MessageId")
                    )
                    continue
            if event is not None:
                events.append(event)
            done.append({"Id": str(len(done)), "ReceiptHandle": msg["ReceiptHandle"]})
        if done:
            self._delete(done)
        return events

    def _parse(self, msg: Mapping[str, Any]) -> Event | None:
        sent = str((msg.get("Attributes") or {}).get("SentTimestamp") or "")
        try:
            received = datetime.fromtimestamp(int(sent[:16]) / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError):  # missing or absurd: use our own clock
            received = datetime.fromtimestamp(self.clock(), tz=UTC)
        try:
            body = json.loads(msg.get("Body") or "")
            event = parse_event(
                body, index=self.index, received_at=received, noticed_jobs=self._noticed_jobs
            )
        except (ValueError, TypeError, RecursionError) as exc:  # MalformedEvent, deep/bad JSON
            self.stats.malformed += 1
            log.warning(
                "dropping malformed event message %s: %s (body starts %r)",
                msg.get("MessageId"),
                str(exc)[:200],
                str(msg.get("Body"))[:120],
            )
            return None
        self.stats.parsed += 1
        if event.step_key is None:
            self.stats.unmapped += 1
        interruption = (
            isinstance(event, TerminationNotice) and event.kind is NoticeKind.INTERRUPTION
        )
        if interruption and event.job_id:
            self._noticed_jobs.add(event.job_id)
        return event

    def _delete(self, entries: list[dict[str, str]]) -> None:
        for start in range(0, len(entries), 10):
            resp = self.call(
                self.sqs,
                "delete_message_batch",
                what=f"SQS queue {self.queue_url}",
                QueueUrl=self.queue_url,
                Entries=entries[start : start + 10],
            )
            self.stats.deleted += len(resp.get("Successful", []))
            for failed in resp.get("Failed", []):
                log.warning(
                    "could not delete message %s: %s", failed.get("Id"), failed.get("Message")
                )
