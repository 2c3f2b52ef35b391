"""Termination sensing in a flow: wait until a step is told to go away, like Airflow's
``SpotTerminationSensor``.

:func:`wait_for_termination` polls the backend block's notice source (local events file; AWS: the
bootstrap's SQS queue, ``events_queue_url``; GCP: preemption events of the step's jobs) and the
step's ledger, with the same :class:`~spot_workflows.termination.TerminationWatch` the Airflow
sensor uses. It returns the first matching :class:`~spot_workflows.core.outcomes.TerminationNotice`
and emits a Prefect event ``spot-workflows.step.termination-notice`` about the step (the job as a
related resource, role ``job``), so automations can react; it returns ``None`` when ``timeout_s``
passes, or when the step finished without a (further) notice.

```python
from prefect import flow
from spot_workflows.prefect import LocalBackendBlock, wait_for_termination

@flow
def watch(step_key: str):
    notice = wait_for_termination(step_key, block=LocalBackendBlock.load("dev"), timeout_s=600)
    if notice is not None:
        print(notice.kind, notice.job_id, notice.deadline)
```
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.events import Event, emit_event

from spot_workflows.core.outcomes import TerminationNotice
from spot_workflows.errors import ConfigError
from spot_workflows.prefect.blocks import SpotBackendBlock
from spot_workflows.prefect.events import JOB_RESOURCE_PREFIX, STEP_RESOURCE_PREFIX, event_name
from spot_workflows.termination import (
    DEFAULT_KINDS,
    TerminationWatch,
    normalize_kinds,
    payload_notice,
)

TERMINATION_EVENT = event_name("termination_notice")
"""``spot-workflows.step.termination-notice``: a step got an interruption warning, a rebalance
recommendation or was preempted (the payload's ``kind`` says which)."""


def _backend_name(block: SpotBackendBlock) -> str:
    model = block.settings_model
    return model.BACKEND if model is not None else type(block).__name__


def emit_termination_event(
    notice: TerminationNotice, *, step_key: str, backend: str
) -> Event | None:
    """The Prefect event of one termination notice of ``step_key``."""
    resource = {
        "prefect.resource.id": STEP_RESOURCE_PREFIX + step_key,
        "prefect.resource.name": step_key,
        "spot-workflows.backend": backend,
    }
    related = []
    if notice.job_id:
        related.append(
            {
                "prefect.resource.id": f"{JOB_RESOURCE_PREFIX}{backend}.{notice.job_id}",
                "prefect.resource.role": "job",
                "prefect.resource.name": notice.job_id,
            }
        )
    payload = notice.model_dump(mode="json", exclude={"detail"})
    return emit_event(event=TERMINATION_EVENT, resource=resource, related=related, payload=payload)


def _default_since() -> float:
    """When the flow run started (a notice that came before the wait is not missed), else now."""
    ctx = FlowRunContext.get()
    started = ctx.flow_run.start_time if ctx is not None and ctx.flow_run is not None else None
    return started.timestamp() if started is not None else time.time()


def _checkpoint_uri(block: SpotBackendBlock, step_key: str, given: str | None) -> str | None:
    if given is not None:
        return given
    try:
        return block.checkpoint_uri_for(step_key)
    except ConfigError:  # a cloud block without checkpoint_root: notices only, no ledger
        return None


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # outside a run (called through .fn): the package logger
        import logging

        return logging.getLogger("spot_workflows.prefect")


@task(name="wait-for-termination", cache_policy=NO_CACHE)
def wait_for_termination(
    step_key: str,
    *,
    block: SpotBackendBlock,
    kinds: Sequence[str] | str = DEFAULT_KINDS,
    timeout_s: float = 3600.0,
    checkpoint_uri: str | None = None,
    job_queue: str | None = None,
    since: float | None = None,
    poll_interval_s: float = 1.0,
) -> TerminationNotice | None:
    """Wait for a termination notice of ``step_key`` on ``block``'s backend.

    :param step_key: the step to watch (notices of other steps are ignored).
    :param block: the step's backend block.
    :param kinds: notice kinds to return on: ``INTERRUPTION``, ``REBALANCE``, ``PREEMPTED``.
    :param timeout_s: give up (return ``None``) after this many seconds.
    :param checkpoint_uri: the step's checkpoint URI, whose ledger reports preempted attempts
        and says when the step finished; default: the block's, when it has a checkpoint root.
    :param job_queue: only notices about jobs of this queue (AWS job queue name or ARN).
    :param since: epoch seconds; older notices are ignored (default: when the flow run started).
    :param poll_interval_s: seconds between polls.
    :returns: the notice, or ``None`` on timeout or when the step finished without one.
    """
    if timeout_s < 0 or poll_interval_s <= 0:
        raise ConfigError(
            f"timeout_s must be >= 0 and poll_interval_s > 0 seconds, got {timeout_s} and "
            f"{poll_interval_s}"
        )
    wanted = normalize_kinds(kinds)
    since = _default_since() if since is None else float(since)
    uri = _checkpoint_uri(block, step_key, checkpoint_uri)
    watch = TerminationWatch(
        source=block.notice_source(since=since),
        step_key=step_key,
        job_queue=job_queue,
        kinds=wanted,
        since=since,
        store=block.checkpoint_store(uri) if uri else None,
    )
    log = _logger()
    deadline = time.monotonic() + timeout_s
    while True:
        for payload in watch.check():
            notice = payload_notice(payload)
            if notice is None:
                log.info("no termination: %s", payload.get("reason"))
                return None
            log.info(
                "termination notice: %s for step %s (job %s)",
                notice.kind.value,
                step_key,
                notice.job_id,
            )
            emit_termination_event(notice, step_key=step_key, backend=_backend_name(block))
            return notice
        left = deadline - time.monotonic()
        if left <= 0:
            log.info("no termination notice for step %s within %s s", step_key, timeout_s)
            return None
        time.sleep(min(poll_interval_s, left))
