"""Termination events for GCP Batch: preemptions seen from job status events and Pub/Sub.

GCP gives a spot VM ~30 s of notice; by the time an orchestrator hears of it, the task is already
gone. Two sources report that, both turned into the package's orchestrator-side notice
(:class:`TerminationNotice` with ``kind=PREEMPTED``, ``source="gcp-batch"``, ``job_id`` and
``step_key``) and, for every state change, a classified :class:`Observation`:

* :class:`GcpPreemptionWatcher` polls ``GetJob`` and reports each ``... due to Spot Preemption
  with exit code 50001.`` status event once -- including preemptions Batch retried in place, which
  never make the job fail;
* :func:`parse_notification` / :class:`GcpNotificationConsumer` read Batch Pub/Sub notifications
  (``Type`` ``JOB_STATE_CHANGED`` / ``TASK_STATE_CHANGED`` with ``JobName``, ``JobUID``,
  ``NewJobState`` / ``NewTaskState``, ``TaskUID`` attributes and the event text as data).

Malformed messages are ignored (logged), never raised: a consumer must not die on one bad message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.backends.gcp_status import job_step_key, observe_job
from spot_workflows.core.classify import classify_gcp, gcp_exit_code_from_events
from spot_workflows.core.outcomes import (
    AttemptState,
    NoticeKind,
    Observation,
    Outcome,
    TerminationNotice,
)
from spot_workflows.errors import SpotWorkflowsError

log = logging.getLogger("spot_workflows.gcp_events")

SOURCE = "gcp-batch"
_INSTANCE = re.compile(r"zones/([a-z0-9-]+)/instances/([A-Za-z0-9_-]+)")
_EXIT_KEYS = ("exitcode", "exit_code", "taskexitcode")


def _is_preemption(text: str, exit_code: int | None) -> bool:
    return exit_code == 50001 or "Spot Preemption" in (text or "")


def _when(value: datetime | None, fallback: float) -> datetime:
    return value if value is not None else datetime.fromtimestamp(fallback, tz=UTC)


def _notice(
    *,
    job_id: str,
    step_key: str | None,
    text: str,
    exit_code: int | None,
    seen_at: datetime,
    **detail: Any,
) -> TerminationNotice:
    m = _INSTANCE.search(text or "")
    info = {"reason": text, "exit_code": exit_code, "description": text, **detail}
    if m:
        info["zone"] = m.group(1)
    return TerminationNotice(
        kind=NoticeKind.PREEMPTED,
        source=SOURCE,
        seen_at=seen_at,
        instance_id=m.group(2) if m else None,
        job_id=job_id,
        step_key=step_key,
        detail={k: v for k, v in info.items() if v is not None},
    )


def preemption_notices(
    job: Any, *, step_key: str | None = None, now: float
) -> list[TerminationNotice]:
    """One notice per preemption status event of a ``batch_v1.Job`` (oldest first)."""
    step_key = step_key or job_step_key(job)
    out: dict[str, TerminationNotice] = {}
    for event in job.status.status_events:
        code = event.task_execution.exit_code if "task_execution" in event else 0
        code = code or gcp_exit_code_from_events([event.description])
        if not _is_preemption(event.description, code):
            continue
        notice = _notice(
            job_id=job.name,
            step_key=step_key,
            text=event.description,
            exit_code=code,
            seen_at=_when(event.event_time, now),
            job_uid=job.uid or None,
        )
        # a job-level "failed due to the following task event" repeats the task's event: one VM
        # is preempted once, so the instance id (else the text) identifies the preemption
        out.setdefault(notice.instance_id or event.description, notice)
    return list(out.values())


class GcpPreemptionWatcher:
    """Polls ``GetJob`` for the watched jobs; each preemption event is reported once."""

    def __init__(self, *, backend: GcpBatchBackend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock
        self._jobs: dict[str, str | None] = {}
        self._seen: set[tuple[str, str]] = set()  # (job, instance id or event text)
        self._lock = threading.Lock()

    def watch(self, job_id: str, *, step_key: str | None = None) -> None:
        with self._lock:
            self._jobs[self.backend.job_path(job_id)] = step_key

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(self.backend.job_path(job_id), None)

    def poll(self) -> tuple[list[TerminationNotice], dict[str, Observation]]:
        """One pass: new preemption notices and the current observation of every watched job.

        Jobs that are done or gone are unwatched; backend errors are logged and retried next pass.
        """
        with self._lock:
            jobs = dict(self._jobs)
        notices: list[TerminationNotice] = []
        observations: dict[str, Observation] = {}
        for name, step_key in jobs.items():
            try:
                job = self.backend.get_job(name)
            except SpotWorkflowsError as exc:
                log.warning("cannot poll %s: %s", name, exc)
                continue
            if job is None:
                self.unwatch(name)
                continue
            for notice in preemption_notices(job, step_key=step_key, now=self.clock()):
                key = (name, notice.instance_id or str(notice.detail.get("description")))
                if key not in self._seen:
                    self._seen.add(key)
                    notices.append(notice)
            observations[name] = obs = observe_job(job)
            if obs.state is AttemptState.DONE:
                self.unwatch(name)
        return notices, observations

    def run(
        self,
        on_notice: Callable[[TerminationNotice], None],
        *,
        stop: threading.Event,
        interval_s: float = 5.0,
    ) -> None:
        """Poll every ``interval_s`` until ``stop`` is set, calling ``on_notice`` for each notice."""
        while not stop.is_set():
            for notice in self.poll()[0]:
                try:
                    on_notice(notice)
                except Exception:  # a bad callback must not stop the watcher
                    log.exception("notice callback failed for %s", notice.job_id)
            stop.wait(interval_s)


# ---------------------------------------------------------------------------------------------
# Pub/Sub notifications
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNotification:
    """One Batch Pub/Sub notification, parsed."""

    type: str  # JOB_STATE_CHANGED | TASK_STATE_CHANGED
    new_state: str  # a JobStatus.State or TaskStatus.State name
    job_id: str  # JobName (projects/P/locations/R/jobs/ID) if present, else JobUID
    job_uid: str | None = None
    task_uid: str | None = None
    region: str | None = None
    exit_code: int | None = None
    description: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def outcome(self) -> tuple[AttemptState, Outcome | None]:
        return classify_gcp(self.new_state, self.exit_code, [self.description])

    @property
    def preempted(self) -> bool:
        return self.new_state == "FAILED" and (
            _is_preemption(self.description, self.exit_code) or self.outcome[1] is Outcome.PREEMPTED
        )

    def observation(self) -> Observation:
        state, outcome = self.outcome
        return Observation(
            job_id=self.job_id,
            state=state,
            outcome=outcome,
            reason=self.description or f"{self.type} -> {self.new_state}",
            exit_code=self.exit_code,
        )

    def notice(
        self, *, step_key: str | None = None, now: float | None = None
    ) -> TerminationNotice | None:
        if not self.preempted:
            return None
        return _notice(
            job_id=self.job_id,
            step_key=step_key,
            text=self.description,
            exit_code=self.exit_code,
            seen_at=_when(None, time.time() if now is None else now),
            type=self.type,
            job_uid=self.job_uid,
            task_uid=self.task_uid,
        )


def _unwrap(message: Any) -> tuple[dict[str, str], str]:
    """(attributes, text) of a pubsub_v1 Message, a REST/push dict, or a push envelope."""
    if isinstance(message, bytes | str):
        message = json.loads(message)
    if isinstance(message, Mapping):
        if "message" in message and isinstance(message["message"], Mapping):
            message = message["message"]  # push envelope
        attributes = message.get("attributes") or {}
        data = message.get("data") or b""
        if isinstance(data, str):  # REST and push bodies carry base64
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                data = data.encode()
    else:
        attributes = getattr(message, "attributes", None) or {}
        data = getattr(message, "data", None) or b""
    text = bytes(data).decode("utf-8", errors="replace").strip()
    return {str(k): str(v) for k, v in dict(attributes).items()}, text


def parse_notification(message: Any) -> BatchNotification | None:
    """Parse a Batch Pub/Sub message; None (and a log line) for anything that is not one."""
    try:
        attributes, text = _unwrap(message)
        if text.startswith("{"):
            body = json.loads(text)
            if isinstance(body, Mapping):
                for k, v in body.items():
                    attributes.setdefault(str(k), str(v))
                text = str(body.get("description") or body.get("message") or "")
        lower = {k.lower(): v for k, v in attributes.items()}
        kind = lower.get("type", "").upper()
        if kind not in ("JOB_STATE_CHANGED", "TASK_STATE_CHANGED"):
            raise ValueError(f"not a Batch notification type: {kind!r}")
        state_key = "newjobstate" if kind == "JOB_STATE_CHANGED" else "newtaskstate"
        new_state = lower.get(state_key, "").upper().removeprefix("STATE.")
        job_id = lower.get("jobname") or lower.get("jobuid")
        if not new_state or not job_id:
            raise ValueError(f"{kind} message without {state_key} or a job name/uid")
        exit_code: int | None = None
        for key in _EXIT_KEYS:
            if lower.get(key, "").lstrip("-").isdigit():
                exit_code = int(lower[key])
                break
        if exit_code is None:
            exit_code = gcp_exit_code_from_events([text])
        return BatchNotification(
            type=kind,
            new_state=new_state,
            job_id=job_id,
            job_uid=lower.get("jobuid"),
            task_uid=lower.get("taskuid"),
            region=lower.get("region"),
            exit_code=exit_code,
            description=text,
            attributes=attributes,
        )
    except Exception as exc:  # malformed input of any shape: skip it
        log.warning("ignoring a message that is not a GCP Batch notification: %s", exc)
        return None


class GcpNotificationConsumer:
    """Turns Batch Pub/Sub messages into notices, with the step each job belongs to.

    ``steps`` maps job names (or uids) to step keys; without an entry, the job is looked up once
    through ``backend`` (its ``SPOT_STEP_KEY`` or step label). Use it as the body of a
    ``google-cloud-pubsub`` subscriber callback: ``consumer.handle(message); message.ack()``.
    """

    def __init__(
        self,
        *,
        steps: Mapping[str, str] | None = None,
        backend: GcpBatchBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.steps = dict(steps or {})
        self.backend = backend
        self.clock = clock

    def step_key(self, n: BatchNotification) -> str | None:
        for key in (n.job_id, n.job_uid):
            if key and key in self.steps:
                return self.steps[key]
        if self.backend is None or not n.job_id.startswith("projects/"):
            return None
        try:
            job = self.backend.get_job(n.job_id)
        except SpotWorkflowsError as exc:
            log.warning("cannot look up %s: %s", n.job_id, exc)
            return None
        key = job_step_key(job) if job is not None else None
        if key:
            self.steps[n.job_id] = key
        return key

    def handle(self, message: Any) -> TerminationNotice | None:
        """The PREEMPTED notice for a message, or None (not a preemption, or malformed)."""
        n = parse_notification(message)
        if n is None or not n.preempted:
            return None
        return n.notice(step_key=self.step_key(n), now=self.clock())

    def handle_all(self, messages: Iterable[Any]) -> list[TerminationNotice]:
        return [x for x in map(self.handle, messages) if x is not None]
