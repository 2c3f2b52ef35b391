"""``wait_for_termination`` on the local backend: a real local spot cloud reclaims a real job, the
task returns the notice and emits a Prefect event about the step; it returns None on timeout and
when the step's ledger says the step finished."""

from __future__ import annotations

import time

from prefect import flow

from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity, NoticeKind, Outcome
from spot_workflows.ledger import Ledger
from spot_workflows.prefect import TERMINATION_EVENT, LocalBackendBlock, wait_for_termination


def block_in(tmp_path, **settings) -> LocalBackendBlock:
    return LocalBackendBlock(
        state_dir=str(tmp_path / "cloud"),
        checkpoint_root=f"file://{tmp_path / 'ckpt'}",
        **settings,
    )


def test_a_reclaim_notice_is_returned_and_emitted_as_an_event(tmp_path, wait_for_events):
    block = block_in(tmp_path, reclaim_after_s=[1.0], notice_window_s=2.0, grace_s=1.0)
    key = "prefect-term-1"

    @flow
    def watched() -> tuple:
        spec = StepSpec(
            key=key, command=["sleep", "30"], checkpoint_uri=block.checkpoint_uri_for(key)
        )
        with block.open_backend(step_key=key) as backend:
            job = backend.submit(spec, job_name=f"{key}-a1", attempt=1, capacity=Capacity.SPOT)
        notice = wait_for_termination(
            key, block=block, kinds=["INTERRUPTION"], timeout_s=60, poll_interval_s=0.2
        )
        return job, notice

    started = time.monotonic()
    job, notice = watched()
    assert notice is not None and time.monotonic() - started < 60
    assert (notice.kind, notice.step_key, notice.job_id) == (NoticeKind.INTERRUPTION, key, job)
    assert notice.deadline is not None and notice.source == "local"

    events = wait_for_events(
        resource_id=f"spot-workflows.step.{key}",
        done=lambda evs: any(e.event == TERMINATION_EVENT for e in evs),
    )
    [event] = [e for e in events if e.event == TERMINATION_EVENT]
    assert event.payload["kind"] == "INTERRUPTION" and event.payload["job_id"] == job
    assert event.resource["spot-workflows.backend"] == "local"
    [related] = [r for r in event.related if r.role == "job"]
    assert related.id == f"spot-workflows.job.local.{job}"


def test_no_notice_within_the_timeout_returns_none(tmp_path):
    block = block_in(tmp_path)

    @flow
    def quiet():
        return wait_for_termination("nothing-runs", block=block, timeout_s=0.5, poll_interval_s=0.1)

    started = time.monotonic()
    assert quiet() is None
    assert 0.4 < time.monotonic() - started < 30


def test_a_step_that_finished_without_a_notice_ends_the_wait(tmp_path):
    block = block_in(tmp_path)
    key = "prefect-term-done"
    ledger = Ledger.open(block.checkpoint_store(block.checkpoint_uri_for(key)), key)
    attempt = ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
    ledger.finish(attempt, Outcome.SUCCEEDED, now=time.time(), reason="exit code 0")

    @flow
    def after_the_end():
        return wait_for_termination(key, block=block, timeout_s=60, poll_interval_s=0.1)

    started = time.monotonic()
    assert after_the_end() is None
    assert time.monotonic() - started < 30  # ended by the ledger, not by the timeout
