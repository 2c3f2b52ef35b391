"""No duplicate jobs: re-runs re-attach, lost replies are adopted, job ids never collide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.cloud import batch_v1

from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.errors import BackendError
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

JobState = batch_v1.JobStatus.State

RUNNER_SCRIPT = """
import sys, grpc
from google.cloud import batch_v1
from google.cloud.batch_v1.services.batch_service.transports import BatchServiceGrpcTransport
from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.config import StepSpec
from spot_workflows.runner import StepRunner
channel = grpc.insecure_channel(sys.argv[2])
client = batch_v1.BatchServiceClient(transport=BatchServiceGrpcTransport(channel=channel))
backend = GcpBatchBackend(project="proj", region="us-central1", client=client)
StepRunner(spec=StepSpec.model_validate_json(sys.argv[1]), backend=backend, poll_interval=0.05).run()
"""


def spec_for(tmp_path: Path, key: str = "crashy") -> StepSpec:
    return StepSpec(
        key=key, command=["python", "x.py"], checkpoint_uri=f"file://{tmp_path}/ckpt", image="img"
    )


def backend_for(batch, **kw) -> GcpBatchBackend:
    return GcpBatchBackend(project="proj", region="us-central1", client=batch.client(), **kw)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def ledger_state(tmp_path: Path) -> str | None:
    path = tmp_path / "ckpt" / "ledger.json"
    if not path.exists():
        return None
    attempts = json.loads(path.read_text())["attempts"]
    return attempts[-1]["state"] if attempts else None


def test_rerun_after_runner_crash_reattaches_without_a_second_create(batch, tmp_path):
    spec = spec_for(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER_SCRIPT, spec.model_dump_json(), f"127.0.0.1:{batch.port}"],
        env={**os.environ, "GOOGLE_CLOUD_PROJECT": "proj"},
    )
    try:
        wait_for(lambda: batch.count("CreateJob") == 1)
        (name,) = batch.jobs
        batch.set_state(name, JobState.RUNNING)
        wait_for(lambda: ledger_state(tmp_path) == AttemptState.RUNNING.value)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the runner dies while the job runs
        proc.wait()
    batch.set_state(name, JobState.SUCCEEDED)

    result = StepRunner(spec=spec, backend=backend_for(batch), poll_interval=0.01).run()

    assert [(a.outcome, a.job_id) for a in result.attempts] == [(Outcome.SUCCEEDED, name)]
    assert batch.count("CreateJob") == 1  # exactly one CreateJob for the one attempt


def test_crash_between_recording_and_job_id_is_resolved_by_name(batch, tmp_path):
    spec = spec_for(tmp_path, key="wal")
    backend = backend_for(batch)
    ledger = Ledger.open(CheckpointStore(spec.checkpoint_uri), "wal")
    a1 = ledger.begin(capacity=Capacity.SPOT, backend=backend.name, now=time.time())
    job_name = backend.submit(spec, job_name=a1.job_name, attempt=1, capacity=Capacity.SPOT)
    # ... and the runner died before writing the job id to the ledger
    batch.apply(job_name, "SUCCEEDED")

    events: list = []
    result = StepRunner(
        spec=spec, backend=backend_for(batch), poll_interval=0.01, on_event=events.append
    ).run()

    assert [(a.outcome, a.job_id) for a in result.attempts] == [(Outcome.SUCCEEDED, job_name)]
    assert batch.count("CreateJob") == 1
    assert "reattached" in [e.kind for e in events]


def test_lost_create_reply_is_adopted_not_duplicated(batch, tmp_path):
    spec = spec_for(tmp_path, key="lossy")
    sleeps: list[float] = []
    backend = backend_for(batch, backoff_s=0.01, sleep=sleeps.append)
    batch.lose_next_reply("CreateJob")  # the job is created but the answer never arrives

    job = backend.submit(spec, job_name="lossy-abc123-a1", attempt=1, capacity=Capacity.SPOT)

    assert job == "projects/proj/locations/us-central1/jobs/lossy-abc123-a1"
    assert batch.count("CreateJob") == 2 and len(batch.jobs) == 1  # the retry got 409: adopted
    assert sleeps == [0.01]
    first, second = batch.requests("CreateJob")
    assert first.request_id == second.request_id != ""  # idempotency key for the real service


def test_job_ids_are_unique_per_attempt_and_step(batch, tmp_path):
    backend = backend_for(batch)
    spec = spec_for(tmp_path, key="Step.Key_1")
    names = [
        backend.submit(spec, job_name=f"Step-Key-1-aa11bb-a{n}", attempt=n, capacity=Capacity.SPOT)
        for n in (1, 2)
    ]
    assert len(set(names)) == 2 and batch.count("CreateJob") == 2
    other = spec_for(tmp_path, key="other")
    with pytest.raises(BackendError, match="belongs to another step"):
        backend.submit(other, job_name="Step-Key-1-aa11bb-a1", attempt=1, capacity=Capacity.SPOT)
    assert len(batch.jobs) == 2


def test_list_jobs_follows_pages_and_filters_by_step(batch, tmp_path):
    backend = backend_for(batch)
    for key, n in [("a", 1), ("a", 2), ("b", 1), ("a", 3)]:
        spec = spec_for(tmp_path, key=key)
        backend.submit(spec, job_name=f"{key}-run-a{n}", attempt=n, capacity=Capacity.SPOT)
    assert [j.name.rsplit("/", 1)[1] for j in backend.list_jobs(step_key="a")] == [
        "a-run-a1",
        "a-run-a2",
        "a-run-a3",
    ]
    assert len(list(backend.list_jobs())) == 4
    assert batch.count("ListJobs") >= 4  # two pages of two, twice
