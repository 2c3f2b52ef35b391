"""StepRunner over GcpBatchBackend, the real BatchServiceClient and an in-process BatchService.

The fake cloud moves one plan step per runner poll (the runner's injectable sleep advances both
the cloud and the shared fake clock), so these runs take milliseconds of wall time.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.cloud import batch_v1

from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.classify import CANCEL_REASON_PREFIX
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.errors import StepFailedError
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

SPOT = batch_v1.AllocationPolicy.ProvisioningModel.SPOT
STANDARD = batch_v1.AllocationPolicy.ProvisioningModel.STANDARD


def make_spec(uri: str, key: str = "train-gpu", **kw) -> StepSpec:
    return StepSpec(
        key=key,
        command=["python", "train.py", "--epochs=3"],
        checkpoint_uri=uri,
        image="us-docker.pkg.dev/proj/ml/train:1",
        **kw,
    )


def make_runner(batch, clock, spec, *, policy=None, store=None, events=None, **backend_kw):
    backend = GcpBatchBackend(
        project="proj", region="us-central1", client=batch.client(), **backend_kw
    )

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        batch.advance()

    return StepRunner(
        spec=spec,
        backend=backend,
        policy=policy or SpotPolicy(),
        store=store,
        poll_interval=5.0,
        clock=clock,
        sleep=sleep,
        on_event=events.append if events is not None else None,
    )


def saves_checkpoint(step: int, storage_options: dict):
    """A plan step standing for the worker: it saves checkpoint ``step`` where its env says."""

    def run(job: batch_v1.Job) -> None:
        env = job.task_groups[0].task_spec.environment.variables
        store = CheckpointStore(env["SPOT_CHECKPOINT_URI"], storage_options=storage_options)
        body = f"weights after step {step} (attempt {env['SPOT_ATTEMPT']})".encode()
        store.save(step, {"model.bin": body}, progress=step / 30)

    return run


def env_of(job: batch_v1.Job) -> dict[str, str]:
    return dict(job.task_groups[0].task_spec.environment.variables)


def provisioning(job: batch_v1.Job):
    return job.allocation_policy.instances[0].policy.provisioning_model


def test_preempted_on_spot_resumes_from_checkpoint_then_escalates_to_standard(batch, clock, gcs):
    uri = "gs://spot-ckpt/lifecycle/train-gpu"
    store = CheckpointStore(uri, storage_options=gcs)
    run = ["SCHEDULED", "RUNNING"]
    batch.plan(*run, saves_checkpoint(10, gcs), ("FAILED", 50001))
    batch.plan(*run, saves_checkpoint(20, gcs), ("FAILED", 50001))
    batch.plan(*run, saves_checkpoint(30, gcs), "SUCCEEDED")
    events: list = []
    runner = make_runner(
        batch,
        clock,
        make_spec(uri),
        policy=SpotPolicy(preemption_budget=2),
        store=store,
        events=events,
    )

    result = runner.run()

    assert result.succeeded and result.escalated
    attempts = result.attempts
    assert [(a.capacity, a.outcome) for a in attempts] == [
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.ON_DEMAND, Outcome.SUCCEEDED),
    ]
    assert [a.exit_code for a in attempts[:2]] == [50001, 50001]
    assert all(a.zone == "us-central1-a" and a.instance_id for a in attempts[:2])
    assert [a.resumed_from_step for a in attempts] == [None, 10, 20]  # the same checkpoint URI
    # what the server received: SPOT, SPOT, then STANDARD; same checkpoint URI every time
    assert [provisioning(j) for j in batch.received] == [SPOT, SPOT, STANDARD]
    assert [env_of(j)["SPOT_CHECKPOINT_URI"] for j in batch.received] == [uri] * 3
    assert [env_of(j)["SPOT_ATTEMPT"] for j in batch.received] == ["1", "2", "3"]
    assert [env_of(j)["SPOT_CAPACITY"] for j in batch.received] == ["SPOT", "SPOT", "ON_DEMAND"]
    assert len({j.name for j in batch.jobs.values()}) == 3  # one unique job id per attempt
    assert store.latest().step == 30
    assert "escalated" in [e.kind for e in events]
    # the ledger lives next to the checkpoints on GCS: a fresh runner sees the finished step
    again = make_runner(
        batch, clock, make_spec(uri), store=CheckpointStore(uri, storage_options=gcs)
    )
    assert again.run().succeeded and batch.count("CreateJob") == 3


def test_app_error_is_not_charged_to_the_preemption_budget(batch, clock, tmp_path):
    batch.plan("RUNNING", ("FAILED", 50001))
    batch.plan("RUNNING", ("FAILED", 1))  # the app's own bug: its own budget
    batch.plan("RUNNING", ("FAILED", 50001))
    batch.plan("RUNNING", "SUCCEEDED")
    policy = SpotPolicy(preemption_budget=2, app_error_retries=1)
    runner = make_runner(batch, clock, make_spec(f"file://{tmp_path}/c"), policy=policy)

    result = runner.run()

    assert [(a.capacity, a.outcome, a.exit_code) for a in result.attempts] == [
        (Capacity.SPOT, Outcome.PREEMPTED, 50001),
        (Capacity.SPOT, Outcome.APP_ERROR, 1),  # retried on SPOT: not a preemption
        (Capacity.SPOT, Outcome.PREEMPTED, 50001),  # 2nd preemption spends the budget
        (Capacity.ON_DEMAND, Outcome.SUCCEEDED, None),
    ]
    assert [provisioning(j) for j in batch.received] == [SPOT, SPOT, SPOT, STANDARD]


def test_app_error_fails_fast_without_touching_spot_budget(batch, clock, tmp_path):
    batch.plan("SCHEDULED", "RUNNING", ("FAILED", 1))
    runner = make_runner(batch, clock, make_spec(f"file://{tmp_path}/c"))
    with pytest.raises(StepFailedError, match="app error exit 1"):
        runner.run()
    assert batch.count("CreateJob") == 1
    (only,) = runner.ledger.attempts
    assert (only.capacity, only.outcome) == (Capacity.SPOT, Outcome.APP_ERROR)


def test_exit_50005_is_a_timeout_and_max_run_duration_is_sent(batch, clock, tmp_path):
    batch.plan("RUNNING", ("FAILED", 50005))
    spec = make_spec(f"file://{tmp_path}/c", timeout_s=3600.5)
    runner = make_runner(batch, clock, spec, policy=SpotPolicy(preemption_budget=5))
    with pytest.raises(StepFailedError, match="run-time limit"):
        runner.run()
    (only,) = runner.ledger.attempts
    assert (only.outcome, only.exit_code) == (Outcome.TIMEOUT, 50005)
    assert batch.count("CreateJob") == 1  # a timeout is not retried as a preemption
    assert batch.received[0].task_groups[0].task_spec.max_run_duration == timedelta(seconds=3601)


def test_stuck_queued_spot_job_is_deleted_and_the_step_escalates(batch, clock, tmp_path):
    batch.plan("SCHEDULED")  # then it sits SCHEDULED: no spot capacity
    batch.plan("SCHEDULED", "RUNNING", "SUCCEEDED")
    policy = SpotPolicy(capacity_timeout_s=60)
    runner = make_runner(batch, clock, make_spec(f"file://{tmp_path}/c"), policy=policy)
    t0 = clock()

    result = runner.run()

    first, second = result.attempts
    assert (first.capacity, first.outcome, first.started_at) == (
        Capacity.SPOT,
        Outcome.NO_CAPACITY,
        None,
    )
    assert 60 <= first.ended_at - t0 < 70  # cancelled right after the capacity timeout
    assert (second.capacity, second.outcome) == (Capacity.ON_DEMAND, Outcome.SUCCEEDED)
    (deleted,) = batch.requests("DeleteJob")
    assert deleted.name == first.job_id
    assert deleted.reason.startswith(CANCEL_REASON_PREFIX)
    assert first.job_id not in batch.jobs  # gone from the server
    assert [provisioning(j) for j in batch.received] == [SPOT, STANDARD]


def test_the_job_sent_carries_provisioning_accelerators_and_environment(batch, clock, tmp_path):
    batch.plan("RUNNING", "SUCCEEDED")
    uri = f"file://{tmp_path}/c"
    spec = make_spec(uri, gpus=2, vcpus=8, memory_mib=30000, env={"WANDB_MODE": "offline"})
    runner = make_runner(
        batch,
        clock,
        spec,
        machine_type="n1-standard-8",
        accelerator_type="nvidia-tesla-t4",
        zones=["us-central1-a", "us-central1-b"],
        in_place_retries=2,
        service_account="trainer@proj.iam.gserviceaccount.com",
        labels={"team": "ml"},
        notification_topic="projects/proj/topics/batch-events",
    )
    runner.run()

    (create,) = batch.requests("CreateJob")
    assert create.parent == "projects/proj/locations/us-central1"
    job = batch.received[0]
    slot = job.allocation_policy.instances[0]
    assert slot.policy.provisioning_model == SPOT == 2
    assert slot.policy.machine_type == "n1-standard-8"
    assert [(a.type_, a.count) for a in slot.policy.accelerators] == [("nvidia-tesla-t4", 2)]
    assert slot.install_gpu_drivers is True
    assert list(job.allocation_policy.location.allowed_locations) == [
        "zones/us-central1-a",
        "zones/us-central1-b",
    ]
    assert job.allocation_policy.service_account.email == "trainer@proj.iam.gserviceaccount.com"
    task = job.task_groups[0].task_spec
    assert env_of(job) == {
        "WANDB_MODE": "offline",
        "SPOT_CHECKPOINT_URI": uri,
        "SPOT_STEP_KEY": "train-gpu",
        "SPOT_ATTEMPT": "1",
        "SPOT_CAPACITY": "SPOT",
        "SPOT_NOTICE_SOURCE": "gcp",
    }
    container = task.runnables[0].container
    assert container.image_uri == "us-docker.pkg.dev/proj/ml/train:1"
    assert [container.entrypoint, *container.commands] == ["python", "train.py", "--epochs=3"]
    assert (task.compute_resource.cpu_milli, task.compute_resource.memory_mib) == (8000, 30000)
    assert task.max_retry_count == 2
    (policy,) = task.lifecycle_policies
    assert policy.action == batch_v1.LifecyclePolicy.Action.RETRY_TASK
    assert list(policy.action_condition.exit_codes) == [50001]
    assert job.labels["spot-workflows-step"] == "train-gpu"
    assert job.labels["spot-workflows-capacity"] == "spot"
    assert job.labels["team"] == "ml"
    assert job.logs_policy.destination == batch_v1.LogsPolicy.Destination.CLOUD_LOGGING
    assert {n.message.type_.name for n in job.notifications} == {
        "JOB_STATE_CHANGED",
        "TASK_STATE_CHANGED",
    }
