"""Preemption notices from GetJob status events, and Pub/Sub messages tied back to steps."""

from __future__ import annotations

import threading

from google.cloud import batch_v1

from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.backends.gcp_events import (
    GcpNotificationConsumer,
    GcpPreemptionWatcher,
    preemption_notices,
)
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, NoticeKind, Outcome

JobState = batch_v1.JobStatus.State
SPEC = StepSpec(
    key="Finetune.v2", command=["python", "ft.py"], checkpoint_uri="file:///tmp/ft", image="img"
)


def submitted(batch, name: str = "Finetune-v2-abc-a1") -> tuple[GcpBatchBackend, str]:
    backend = GcpBatchBackend(project="proj", region="us-central1", client=batch.client())
    job = backend.submit(SPEC, job_name=name, attempt=1, capacity=Capacity.SPOT)
    return backend, job


def test_watcher_reports_each_preemption_once_even_when_batch_retries_in_place(batch, clock):
    backend, job = submitted(batch)
    watcher = GcpPreemptionWatcher(backend=backend, clock=clock)
    watcher.watch(job)
    batch.apply(job, "RUNNING")
    assert watcher.poll()[0] == []

    batch.apply(job, ("PREEMPTED_RETRIED", 50001))  # Batch retried the task: job stays RUNNING
    notices, observed = watcher.poll()
    (notice,) = notices
    assert notice.kind is NoticeKind.PREEMPTED and notice.source == "gcp-batch"
    assert notice.job_id == job
    assert notice.step_key == "Finetune.v2"  # exact, from the job's SPOT_STEP_KEY
    assert notice.instance_id and notice.detail["zone"] == "us-central1-a"
    assert notice.detail["exit_code"] == 50001 and "Spot Preemption" in notice.detail["reason"]
    assert observed[job].state is AttemptState.RUNNING
    assert watcher.poll()[0] == []  # reported once

    batch.apply(job, ("FAILED", 50001))
    notices, observed = watcher.poll()
    assert len(notices) == 1  # the job-level event repeats the task event: one preemption
    assert observed[job].outcome is Outcome.PREEMPTED
    # the job now carries two preemptions (retried one, final one), each reported once
    assert len(preemption_notices(backend.get_job(job), now=clock())) == 2
    assert watcher.poll() == ([], {})  # done jobs are no longer polled


def test_watcher_run_loop_calls_back_and_survives_a_bad_callback(batch, clock):
    backend, job = submitted(batch)
    watcher = GcpPreemptionWatcher(backend=backend, clock=clock)
    watcher.watch(job, step_key="given-key")
    batch.apply(job, ("PREEMPTED_RETRIED", 50001))
    seen, stop = [], threading.Event()

    def on_notice(notice):
        seen.append(notice)
        stop.set()
        raise RuntimeError("callback bug")

    watcher.run(on_notice, stop=stop, interval_s=0.01)
    assert [n.step_key for n in seen] == ["given-key"]


def test_pubsub_message_is_tied_to_its_step_through_the_backend(batch, clock):
    backend, job = submitted(batch)
    consumer = GcpNotificationConsumer(backend=backend, clock=clock)
    text = (
        "Task state is updated from RUNNING to FAILED on zones/us-central1-b/instances/81 due to "
        "Spot Preemption with exit code 50001."
    )
    message = {
        "attributes": {
            "Type": "TASK_STATE_CHANGED",
            "JobName": job,
            "JobUID": batch.jobs[job].uid,
            "NewTaskState": "FAILED",
            "TaskUID": f"{batch.jobs[job].uid}-group0-0",
            "Region": "us-central1",
        },
        "data": text.encode(),
    }
    notice = consumer.handle(message)
    assert notice is not None and notice.step_key == "Finetune.v2"
    assert (notice.job_id, notice.instance_id, notice.detail["zone"]) == (
        job,
        "81",
        "us-central1-b",
    )
    assert consumer.handle(message).step_key == "Finetune.v2"
    assert batch.count("GetJob") == 1  # looked up once, then cached
    unknown = {**message, "attributes": {**message["attributes"], "JobName": job + "-gone"}}
    assert consumer.handle(unknown).step_key is None
    assert consumer.handle({"attributes": {"Type": "JOB_STATE_CHANGED"}}) is None
