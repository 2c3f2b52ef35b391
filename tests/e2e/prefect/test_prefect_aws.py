"""The same spot flow on AWS Batch: a real moto server over HTTP, real boto3 + s3fs."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from moto_lab import REGION, bootstrap_queues, moto_server
from prefect import flow

from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.prefect import AwsBatchBackendBlock, SpotPolicyBlock, event_name, spot_task

RECLAIM = "Host EC2 (instance i-0a1b2c3d4e5f60718) terminated."


@pytest.fixture(scope="module")
def aws() -> Iterator[SimpleNamespace]:
    with moto_server() as moto, pytest.MonkeyPatch.context() as mp:
        boot = bootstrap_queues(moto, subnets=2, bucket="ckpt")
        yield SimpleNamespace(
            url=moto.url, outputs=boot.outputs(), batch=moto.client("batch"), mp=mp
        )


def test_reclaims_on_aws_batch_resume_from_the_checkpoint_and_escalate(aws, wait_for_events):
    block = AwsBatchBackendBlock(
        spot_queue=aws.outputs["spot_queue"],
        on_demand_queue=aws.outputs["on_demand_queue"],
        region_name=REGION,
        endpoint_url=aws.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        checkpoint_root="s3://ckpt/flows",
    )
    key = "aws-finetune-2026-11-23"
    store = block.checkpoint_store(block.checkpoint_uri_for(key))
    store.save(5, {"model.pt": b"weights" * 100}, progress=0.25)  # progress made before

    # moto's simple Batch fails a job at submit while MOTO_SIMPLE_BATCH_FAIL_AFTER=0;
    # terminate_job then gives it the reason AWS reports for a spot reclaim
    reclaims = [RECLAIM, RECLAIM]
    aws.mp.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")

    def reclaim_spot(event):
        if event.kind == "submitted" and reclaims:
            aws.batch.terminate_job(jobId=event.attempt.job_id, reason=reclaims.pop(0))
            if not reclaims:
                aws.mp.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER")

    @spot_task(
        backend=block,
        policy=SpotPolicyBlock(preemption_budget=2),
        key=key,
        poll_interval=0.05,
        on_event=reclaim_spot,
        image="public.ecr.aws/docker/library/python:3.11",
        gpus=1,
    )
    def finetune() -> list[str]:
        return ["python", "train.py", "--epochs=3"]

    @flow
    def finetune_on_aws():
        return finetune()

    result = finetune_on_aws()
    assert [(a.capacity, a.outcome) for a in result.attempts] == [
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.ON_DEMAND, Outcome.SUCCEEDED),
    ]
    assert [a.resumed_from_step for a in result.attempts] == [5, 5, 5]
    assert result.backend == "aws-batch" and result.escalated
    # the ledger went to S3 next to the checkpoints
    assert store.read("ledger.json") is not None
    jobs = aws.batch.describe_jobs(jobs=[a.job_id for a in result.attempts])["jobs"]
    assert len(jobs) == 3  # one Batch job per attempt, no duplicates

    events = wait_for_events(
        resource_id=f"spot-workflows.step.{key}",
        done=lambda evs: any(e.event == event_name("succeeded") for e in evs),
    )
    preempted = [e for e in events if e.event == event_name("preempted")]
    assert [e.payload["reason"] for e in preempted] == [RECLAIM, RECLAIM]
    assert [[r.id for r in e.related if r.role == "job"] for e in preempted] == [
        [f"spot-workflows.job.aws-batch.{a.job_id}"] for a in result.attempts[:2]
    ]
    assert [e.event for e in events].count(event_name("escalated")) == 1
