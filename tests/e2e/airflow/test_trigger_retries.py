"""SpotJobTrigger's describe goes through the shared retry helper: failures that may pass are
retried with backoff (MAX_DESCRIBE_FAILURES tries in a row at most), bad credentials are reported
at once. The backend is a real local spot cloud; failures are injected in front of its describe."""

from __future__ import annotations

import asyncio
import logging

import pytest

from spot_workflows.airflow.triggers import MAX_DESCRIBE_FAILURES, SpotJobTrigger
from spot_workflows.errors import BackendError, CredentialsError


class FlakyDescribeTrigger(SpotJobTrigger):
    """The real trigger on the real backend, whose ``describe`` first raises ``failures``."""

    def __init__(self, *, failures: list[Exception], monkeypatch: pytest.MonkeyPatch, **kw):
        super().__init__(**kw)
        self.failures, self.monkeypatch, self.calls = failures, monkeypatch, 0

    async def _backend(self):
        backend = await super()._backend()
        real = backend.describe

        def describe(job_ids):
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return real(job_ids)

        self.monkeypatch.setattr(backend, "describe", describe)
        return backend


def first_event(trigger, timeout: float = 20):
    async def go():
        return await asyncio.wait_for(anext(trigger.run()), timeout)

    return asyncio.run(go()).payload


def trigger(local_conn, monkeypatch, failures) -> FlakyDescribeTrigger:
    conn = local_conn()
    return FlakyDescribeTrigger(
        spot_conn_id=conn["conn_id"],
        job_id="local-nope",
        poll_interval=0.01,
        failures=failures,
        monkeypatch=monkeypatch,
    )


def test_describe_failures_are_retried_then_the_trigger_fires(
    local_conn, monkeypatch, caplog, capsys
):
    t = trigger(local_conn, monkeypatch, [BackendError("API down"), BackendError("throttled")])
    with caplog.at_level(logging.WARNING):
        assert first_event(t) == {"status": "gone", "job_id": "local-nope"}
    assert t.calls == 3
    out = capsys.readouterr()
    text = caplog.text + out.out + out.err  # the trigger's logger may be structlog's (stdout)
    assert "transient backend error on describe local-nope (try 1 of 5)" in text
    assert "(try 2 of 5): BackendError: throttled; retrying in" in text


def test_describe_that_keeps_failing_ends_in_an_error_event(local_conn, monkeypatch):
    errors = [BackendError(f"API down {i}") for i in range(MAX_DESCRIBE_FAILURES + 3)]
    t = trigger(local_conn, monkeypatch, errors)
    event = first_event(t)
    assert event == {
        "status": "error",
        "job_id": "local-nope",
        "message": f"describe failed {MAX_DESCRIBE_FAILURES} times: API down 4",
    }
    assert t.calls == MAX_DESCRIBE_FAILURES


def test_bad_credentials_are_reported_at_once(local_conn, monkeypatch):
    t = trigger(local_conn, monkeypatch, [CredentialsError("no usable AWS credentials")] * 3)
    event = first_event(t)
    assert event["status"] == "error"
    assert event["message"] == "describe failed once: no usable AWS credentials"
    assert t.calls == 1
