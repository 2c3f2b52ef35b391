"""The same example DAG on GCP Batch, switched by connection only (no GCP emulator
exists, so ``tests/gcp_fake.py`` serves ``google.cloud.batch.v1.BatchService`` over in-process gRPC).

The ``google_cloud_platform`` connection points the real ``BatchServiceClient`` at the fake with
its ``emulator_host`` extra. The fake cloud moves only when told: each job gets a scripted life
(QUEUED -> SCHEDULED -> RUNNING -> FAILED with exit code 50001 and the status-event text GCP
writes for a Spot preemption, or -> SUCCEEDED), played in full when the runner logs
"attempt N on CAP as JOB", which is written before the task defers, so the trigger always sees
the finished job. No wall-clock race: nothing waits for time to pass.
"""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from gcp_fake import FakeBatch, FakeClock, batch_server
from google.cloud import batch_v1

from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

PROJECT, LOCATION = "spot-e2e", "us-central1"
IMAGE = {"image": "us-docker.pkg.dev/spot-e2e/train/toy:1"}
Provisioning = batch_v1.AllocationPolicy.ProvisioningModel


@pytest.fixture
def gcp(tmp_path, monkeypatch):
    """A fake Batch API and a ``google_cloud_platform`` connection pointing at it."""
    with batch_server(FakeClock(time.time())) as batch:  # event times near the runner's clock
        extra = {
            "project": PROJECT,
            "location": LOCATION,
            "emulator_host": batch.host,
            "checkpoint_root": f"file://{tmp_path / 'ckpt'}",
        }
        monkeypatch.setenv(
            "AIRFLOW_CONN_GCP_FAKE",
            json.dumps({"conn_type": "google_cloud_platform", "extra": extra}),
        )
        yield {"conn_id": "gcp_fake", "batch": batch}


def save_checkpoint(step: int):
    """A plan step: the worker saves checkpoint ``step`` where its environment says to."""

    def run(job: batch_v1.Job) -> None:
        env = job.task_groups[0].task_spec.environment.variables
        CheckpointStore(env["SPOT_CHECKPOINT_URI"]).save(step, {"w.bin": b"w" * 64}, progress=0.1)

    return run


class SpotMarket(logging.Handler):
    """Plays each job's plan as soon as the runner has submitted it: the first ``reclaims`` spot
    jobs are preempted the GCP way (the first one having saved checkpoint 5), then the next job
    (on-demand, after escalation) succeeds."""

    SUBMITTED = re.compile(
        r"^(?P<key>\S+): attempt (?P<n>\d+) on (?P<cap>\w+)(?: in \S+)? as (?P<job>\S+?)(,|$)"
    )

    def __init__(self, batch: FakeBatch, *, reclaims: int) -> None:
        super().__init__(level=logging.INFO)
        self.batch = batch
        self.seen: list[tuple[str, str]] = []  # (capacity, job name) in submission order
        for n in range(reclaims):
            saves = [save_checkpoint(5)] if n == 0 else []
            batch.plan("SCHEDULED", "RUNNING", *saves, ("FAILED", 50001))
        batch.plan("SCHEDULED", "RUNNING", "SUCCEEDED")

    def emit(self, record: logging.LogRecord) -> None:
        m = self.SUBMITTED.match(record.getMessage())
        if m:
            self.seen.append((m["cap"], m["job"]))
            self.batch.settle(m["job"])


@pytest.fixture
def market(gcp, on_runner_log):
    def make(reclaims: int) -> SpotMarket:
        return on_runner_log(SpotMarket(gcp["batch"], reclaims=reclaims))

    return make


def test_finetune_dag_on_gcp_batch_resumes_and_escalates(run_dag, gcp, market):
    batch = gcp["batch"]
    spot_market = market(reclaims=2)
    result = run_dag("spot_finetune", spot_conn_id=gcp["conn_id"], resources=IMAGE)

    assert result.state == "success"
    ti = result.tis["finetune"]
    assert (str(ti.state), ti.try_number) == ("success", 1)
    assert result.task_state("report") == "success"
    summary = result.xcom("finetune")
    assert summary["backend"] == "gcp-batch"
    assert summary["final_capacity"] == "ON_DEMAND"
    assert summary["history"] == "preempted 2 times on SPOT, escalated, ON_DEMAND attempt succeeded"
    assert [a["resumed_from_step"] for a in summary["attempts"]] == [None, 5, 5]
    last = summary["attempts"][-1]["job_id"]
    job_id = last.rsplit("/", 1)[1]
    assert last == f"projects/{PROJECT}/locations/{LOCATION}/jobs/{job_id}"
    assert summary["console_url"] == (
        f"https://console.cloud.google.com/batch/jobsDetail/regions/{LOCATION}/jobs/{job_id}"
        f"/details?project={PROJECT}"
    )
    assert result.xcom("report") == f"{summary['step_key']}: {summary['history']} -> ON_DEMAND"

    # the ledger, next to the checkpoints: what each attempt was and where it resumed from
    store = CheckpointStore(summary["checkpoint_uri"])
    assert store.latest().step == 5
    ledger = Ledger.open(store, summary["step_key"])
    attempts = ledger.attempts
    assert [a.capacity for a in attempts] == [Capacity.SPOT, Capacity.SPOT, Capacity.ON_DEMAND]
    assert [a.outcome for a in attempts] == [
        Outcome.PREEMPTED,
        Outcome.PREEMPTED,
        Outcome.SUCCEEDED,
    ]
    assert [a.resumed_from_step for a in attempts] == [None, 5, 5]
    assert [a.exit_code for a in attempts[:2]] == [50001, 50001]
    for a in attempts[:2]:  # the reason is GCP's own text: the job's last status event
        assert a.reason == batch.jobs[a.job_id].status.status_events[-1].description[:500]
        assert "due to Spot Preemption with exit code 50001." in a.reason
    assert attempts[0].last_checkpoint_step == 5
    assert [(c, j) for c, j in spot_market.seen] == [(a.capacity.value, a.job_id) for a in attempts]

    # one CreateJob per attempt, unique ids, no 409; SPOT then STANDARD provisioning
    creates = batch.requests("CreateJob")
    assert len(creates) == 3
    assert [f"{r.parent}/jobs/{r.job_id}" for r in creates] == [a.job_id for a in attempts]
    assert len({r.job_id for r in creates}) == 3
    assert sorted(batch.jobs) == sorted(a.job_id for a in attempts)
    models = [j.allocation_policy.instances[0].policy.provisioning_model for j in batch.received]
    assert models == [Provisioning.SPOT, Provisioning.SPOT, Provisioning.STANDARD]
    assert [j.labels["spot-workflows-capacity"] for j in batch.received] == [
        "spot",
        "spot",
        "on_demand",
    ]
    assert batch.count("DeleteJob") == 0  # nothing to cancel: every job ended on its own
