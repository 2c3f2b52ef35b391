"""A real moto server (``tests/moto_lab.py``): boto3 talks HTTP to it; no Docker.

One server per session; Batch runs in moto's simple mode (jobs finish at submit, and fail
instead when ``MOTO_SIMPLE_BATCH_FAIL_AFTER`` is set). Every test starts from a reset server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from moto_lab import REGION, Moto, bootstrap_queues, make_boot_config
from moto_lab import moto_server as start_moto

from spot_workflows.backends.aws_batch import AwsBatchBackend
from spot_workflows.backends.aws_bootstrap import Bootstrap
from spot_workflows.runner import RunnerEvent
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    with start_moto() as moto:
        yield moto


@pytest.fixture
def moto(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    # moto keeps its state per process, shared by every server in it: start clean even if
    # another test module (e.g. the Prefect-on-AWS e2e test) ran its own server before us.
    moto_server.reset()
    yield moto_server
    moto_server.enforce_auth(False)
    moto_server.job_transition(None)
    moto_server.reset()


@dataclass
class Infra:
    moto: Moto
    boot: Bootstrap
    outputs: dict[str, str]
    bucket: str = "ckpt"

    def backend(self, **kw: Any) -> AwsBatchBackend:
        kw.setdefault("sleep", lambda s: None)
        return AwsBatchBackend(
            spot_queue=self.outputs["spot_queue"],
            on_demand_queue=self.outputs["on_demand_queue"],
            region=REGION,
            endpoint_url=self.moto.url,
            **kw,
        )

    def store(self, key: str) -> CheckpointStore:
        return CheckpointStore(f"s3://{self.bucket}/{key}", storage_options=self.moto.s3_options)

    def jobs(self, queue: str) -> list[dict]:
        """Every job in ``queue``, whatever its status (one list_jobs call per status)."""
        batch = self.moto.client("batch")
        out: dict[str, dict] = {}
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"):
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                out[j["jobId"]] = j
        for status in ("SUCCEEDED", "FAILED"):
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                out[j["jobId"]] = j
        return list(out.values())


@pytest.fixture
def boot_config():
    """``boot_config(moto, **overrides)``: a BootstrapConfig on moto's default VPC + IAM roles."""
    return make_boot_config


@pytest.fixture
def infra(moto: Moto) -> Infra:
    boot = bootstrap_queues(moto, bucket="ckpt")
    return Infra(moto=moto, boot=boot, outputs=boot.outputs())


@dataclass
class Market:
    """The next submissions fail with these Batch reasons (in order), then jobs succeed.

    moto's simple Batch fails a job at submit while MOTO_SIMPLE_BATCH_FAIL_AFTER=0 is set;
    ``terminate_job`` then gives it the reason AWS would report (e.g. ``Host EC2 ...``).
    """

    moto: Moto
    monkeypatch: pytest.MonkeyPatch
    reasons: list[str]
    events: list[RunnerEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.batch = self.moto.client("batch")
        self._arm()

    def _arm(self) -> None:
        if self.reasons:
            self.monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
        else:
            self.monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)

    def on_event(self, event: RunnerEvent) -> None:
        self.events.append(event)
        if event.kind == "submitted" and self.reasons:
            assert event.attempt is not None and event.attempt.job_id
            self.batch.terminate_job(jobId=event.attempt.job_id, reason=self.reasons.pop(0))
            self._arm()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def market_factory(moto: Moto, monkeypatch: pytest.MonkeyPatch):
    return lambda reasons: Market(moto=moto, monkeypatch=monkeypatch, reasons=list(reasons))


class FakeClock:
    """The runner's clock and sleep: sleeping advances time without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
