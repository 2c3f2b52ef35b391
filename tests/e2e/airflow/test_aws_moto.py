"""The same example DAGs on AWS Batch (moto server, real HTTP), switched by connection only.

moto's simple Batch finishes jobs at submit; a reclaim is played the way AWS reports it: the job
fails (``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``) and ``terminate_job`` gives it the reason
``Host EC2 (instance i-...) terminated.``. The market reacts to the runner's "submitted" log line,
which is written before the task defers, so the trigger always sees the reclaimed job.
"""

from __future__ import annotations

import json
import logging
import re

import boto3
import pytest
from moto_lab import REGION, bootstrap_queues, moto_server

from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

RECLAIM = "Host EC2 (instance i-0f1e2d3c4b5a69788) terminated."


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server


@pytest.fixture
def aws(moto, tmp_path, monkeypatch):
    """Bootstrapped Batch queues on a reset moto, and an ``aws`` connection pointing at them;
    moto is reset again afterwards (its state is per process, shared by every moto server)."""
    moto.reset()
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    boot = bootstrap_queues(moto, subnets=2, bucket=None)
    out = boot.outputs()
    extra = {
        "region_name": REGION,
        "endpoint_url": moto.url,
        "spot_queue": out["spot_queue"],
        "on_demand_queue": out["on_demand_queue"],
        "events_queue_url": out["events_queue_url"],
        "checkpoint_root": f"file://{tmp_path / 'ckpt'}",
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_MOTO",
        json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}),
    )
    batch = moto.client("batch")
    yield {"conn_id": "aws_moto", "batch": batch, **out}
    moto.reset()  # moto's state is per process: leave none for other test modules


def jobs_in(batch, queue: str) -> list[dict]:
    found = {}
    for status in (
        "SUBMITTED",
        "PENDING",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
    ):
        for job in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
            found[job["jobId"]] = job
    return list(found.values())


class SpotMarket(logging.Handler):
    """Reclaims the next ``reclaims`` spot attempts as they are submitted; the first reclaimed
    attempt leaves a checkpoint (step 5) behind, as a real one would."""

    SUBMITTED = re.compile(
        r"^(?P<key>\S+): attempt (?P<n>\d+) on SPOT(?: in \S+)? as (?P<job>\S+?)(,|$)"
    )

    def __init__(self, *, batch, reclaims: int, checkpoint_root: str, monkeypatch) -> None:
        super().__init__(level=logging.INFO)
        self.batch, self.left, self.root, self.mp = batch, reclaims, checkpoint_root, monkeypatch
        self._arm()

    def _arm(self) -> None:
        if self.left:
            self.mp.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # the next job fails at submit
        else:
            self.mp.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)

    def emit(self, record: logging.LogRecord) -> None:
        m = self.SUBMITTED.match(record.getMessage())
        if not m or not self.left:
            return
        if m["n"] == "1":
            CheckpointStore(f"{self.root}/{m['key']}").save(5, {"w.bin": b"w" * 64}, progress=0.1)
        self.batch.terminate_job(jobId=m["job"], reason=RECLAIM)
        self.left -= 1
        self._arm()


@pytest.fixture
def market(aws, monkeypatch, tmp_path, on_runner_log):
    def make(reclaims: int) -> SpotMarket:
        return on_runner_log(
            SpotMarket(
                batch=aws["batch"],
                reclaims=reclaims,
                checkpoint_root=f"file://{tmp_path / 'ckpt'}",
                monkeypatch=monkeypatch,
            )
        )

    return make


IMAGE = {"image": "public.ecr.aws/docker/library/python:3.11"}


def test_finetune_dag_on_aws_batch_resumes_and_escalates(run_dag, aws, market):
    market(reclaims=2)
    result = run_dag("spot_finetune", spot_conn_id=aws["conn_id"], resources=IMAGE)

    assert result.state == "success"
    ti = result.tis["finetune"]
    assert (str(ti.state), ti.try_number) == ("success", 1)
    summary = result.xcom("finetune")
    assert summary["backend"] == "aws-batch"
    assert summary["history"] == "preempted 2 times on SPOT, escalated, ON_DEMAND attempt succeeded"
    assert [a["resumed_from_step"] for a in summary["attempts"]] == [None, 5, 5]
    last = summary["attempts"][-1]["job_id"]
    assert summary["console_url"] == (
        f"https://{REGION}.console.aws.amazon.com/batch/home?region={REGION}#jobs/detail/{last}"
    )
    ledger = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"])
    assert [a.reason for a in ledger.attempts[:2]] == [RECLAIM, RECLAIM]
    # one AWS job per attempt, each in its capacity's queue
    spot = {j["jobId"] for j in jobs_in(aws["batch"], aws["spot_queue"])}
    on_demand = {j["jobId"] for j in jobs_in(aws["batch"], aws["on_demand_queue"])}
    assert spot == {a.job_id for a in ledger.attempts[:2]} and on_demand == {last}


def test_retry_after_a_worker_crash_leaves_one_aws_job(run_dag, aws):
    result = run_dag("spot_test_crash", spot_conn_id=aws["conn_id"], resources=IMAGE)

    assert result.state == "success" and result.tis["step"].try_number == 2
    jobs = jobs_in(aws["batch"], aws["spot_queue"]) + jobs_in(aws["batch"], aws["on_demand_queue"])
    assert [j["jobId"] for j in jobs] == [result.xcom("step")["attempts"][0]["job_id"]]


def test_termination_trigger_fires_on_an_eventbridge_interruption_warning(aws):
    import asyncio
    import time

    from spot_workflows.airflow.triggers import SpotTerminationTrigger

    events = boto3.client("events", endpoint_url=aws["batch"].meta.endpoint_url, region_name=REGION)
    events.put_events(
        Entries=[
            {
                "Source": "aws.ec2",
                "DetailType": "EC2 Spot Instance Interruption Warning",
                "Detail": json.dumps({"instance-id": "i-0abc", "instance-action": "terminate"}),
            }
        ]
    )
    trigger = SpotTerminationTrigger(
        spot_conn_id=aws["conn_id"],
        kinds=["INTERRUPTION"],
        since=time.time() - 60,
        poll_interval=0.2,
    )

    async def first():
        return (await asyncio.wait_for(anext(trigger.run()), 20)).payload

    payload = asyncio.run(first())
    assert (payload["terminated"], payload["kind"], payload["source"]) == (
        True,
        "INTERRUPTION",
        "eventbridge",
    )
    assert payload["notice"]["instance_id"] == "i-0abc"
    assert payload["notice"]["action"] == "terminate"
