"""A step's whole life on AWS Batch (moto server, real HTTP) driven by the real StepRunner."""

from __future__ import annotations

import time

import pytest

from spot_workflows.backends.aws_jobs import env_of
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.errors import StepFailedError
from spot_workflows.ledger import Ledger
from spot_workflows.pricing import load_catalog
from spot_workflows.report import run_report
from spot_workflows.runner import StepRunner

RECLAIM = "Host EC2 (instance i-0f1e2d3c4b5a69788) terminated."
APP_EXIT = "Essential container in task exited"


def spec_for(key: str, **kw) -> StepSpec:
    return StepSpec(
        key=key,
        command=["python", "train.py", "--epochs=3"],
        image="public.ecr.aws/docker/library/python:3.11",
        checkpoint_uri=f"s3://ckpt/{key}",
        gpus=1,
        vcpus=4,
        memory_mib=16000,
        timeout_s=3600,
        **kw,
    )


def describe(infra, job_ids: list[str]) -> dict[str, dict]:
    jobs = infra.moto.client("batch").describe_jobs(jobs=job_ids)["jobs"]
    return {j["jobId"]: j for j in jobs}


def test_reclaims_resume_from_the_checkpoint_on_spot_then_escalate_to_on_demand(
    infra, market_factory
):
    spec = spec_for("train-llm-2026-11-23")
    store = infra.store(spec.key)
    store.save(5, {"model.pt": b"weights" * 100}, progress=0.25)
    market = market_factory([RECLAIM, RECLAIM])  # spot is reclaimed twice, then capacity holds
    backend = infra.backend()
    runner = StepRunner(
        spec=spec,
        backend=backend,
        policy=SpotPolicy(preemption_budget=2),
        store=store,
        poll_interval=0,
        sleep=lambda s: None,
        on_event=market.on_event,
    )
    result = runner.run()

    assert result.succeeded and result.escalated
    assert [(a.capacity, a.outcome) for a in result.attempts] == [
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.ON_DEMAND, Outcome.SUCCEEDED),
    ]
    assert [a.instance_id for a in result.attempts[:2]] == ["i-0f1e2d3c4b5a69788"] * 2
    assert all(a.reason == RECLAIM for a in result.attempts[:2])
    assert [a.resumed_from_step for a in result.attempts] == [5, 5, 5]
    assert "escalated" in market.kinds() and market.kinds().count("preempted") == 2

    # what AWS was asked to run: same checkpoint URI every attempt, one queue per capacity
    jobs = describe(infra, [a.job_id for a in result.attempts])
    envs = [env_of(jobs[a.job_id]) for a in result.attempts]
    assert {e["SPOT_CHECKPOINT_URI"] for e in envs} == {"s3://ckpt/train-llm-2026-11-23"}
    assert [e["SPOT_ATTEMPT"] for e in envs] == ["1", "2", "3"]
    assert [e["SPOT_CAPACITY"] for e in envs] == ["SPOT", "SPOT", "ON_DEMAND"]
    assert {e["SPOT_STEP_KEY"] for e in envs} == {spec.key}
    queues = [jobs[a.job_id]["jobQueue"].rsplit("/", 1)[1] for a in result.attempts]
    assert queues == [infra.outputs["spot_queue"]] * 2 + [infra.outputs["on_demand_queue"]]
    assert [jobs[a.job_id]["jobName"] for a in result.attempts] == [
        a.job_name for a in result.attempts
    ]
    assert all(spec.key in a.job_name for a in result.attempts)
    assert len(infra.jobs(infra.outputs["spot_queue"])) == 2
    assert len(infra.jobs(infra.outputs["on_demand_queue"])) == 1

    # one job definition serves every attempt: image, command, GPU, timeout
    definitions = {j["jobDefinition"] for j in jobs.values()}
    assert len(definitions) == 1
    jd = infra.moto.client("batch").describe_job_definitions(jobDefinitions=list(definitions))
    props = jd["jobDefinitions"][0]["containerProperties"]
    assert {"type": "GPU", "value": "1"} in props["resourceRequirements"]
    assert props["command"] == spec.command and props["image"] == spec.image
    assert jd["jobDefinitions"][0]["timeout"] == {"attemptDurationSeconds": 3600}

    # the ledger next to the checkpoints (on S3) tells the same story
    ledger = Ledger.open(store, spec.key)
    assert [a.outcome for a in ledger.attempts] == [a.outcome for a in result.attempts]

    # ... and so does the cost report built from it
    rep = run_report(["s3://ckpt"], load_catalog(), storage_options=infra.moto.s3_options)
    (step,) = rep.steps
    assert step.step_key == spec.key and rep.reclaims == 2
    assert [a.capacity for a in step.cost.attempts] == [a.capacity for a in result.attempts]
    for row in step.cost.attempts:  # priced from the catalog, or explicitly unpriced, never $0
        assert row.cost_usd is None or row.hourly_usd > 0
    assert len(rep.unpriced) == sum(
        1 for row in step.cost.attempts if row.cost_usd is None and row.billed_hours > 0
    )


def test_app_error_is_retried_on_its_own_budget_not_the_preemption_budget(infra, market_factory):
    spec = spec_for("etl-app-error")
    market = market_factory([APP_EXIT, RECLAIM])
    result = StepRunner(
        spec=spec,
        backend=infra.backend(),
        policy=SpotPolicy(preemption_budget=1, app_error_retries=1),
        store=infra.store(spec.key),
        poll_interval=0,
        sleep=lambda s: None,
        on_event=market.on_event,
    ).run()
    # the app error neither spent the preemption budget nor moved the step off spot
    assert [(a.capacity, a.outcome) for a in result.attempts] == [
        (Capacity.SPOT, Outcome.APP_ERROR),
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.ON_DEMAND, Outcome.SUCCEEDED),
    ]


def test_app_error_fails_fast_without_touching_the_preemption_budget(infra, market_factory):
    spec = spec_for("etl-bug")
    market = market_factory([APP_EXIT])
    runner = StepRunner(
        spec=spec,
        backend=infra.backend(),
        policy=SpotPolicy(preemption_budget=3),
        store=infra.store(spec.key),
        poll_interval=0,
        sleep=lambda s: None,
        on_event=market.on_event,
    )
    with pytest.raises(StepFailedError, match=r"(?i)app.error"):
        runner.run()
    assert [(a.capacity, a.outcome) for a in runner.ledger.attempts] == [
        (Capacity.SPOT, Outcome.APP_ERROR)
    ]
    assert len(infra.jobs(infra.outputs["spot_queue"])) == 1
    assert infra.jobs(infra.outputs["on_demand_queue"]) == []


def _pin_runnable(infra, job_id: str) -> None:
    """Hold a job in RUNNABLE, as AWS does when no instance can be had for it.

    moto's threaded job model walks SUBMITTED -> PENDING -> RUNNABLE -> STARTING one step per
    ``seconds`` (time progression); once the job is RUNNABLE, a manual progression that needs
    more "advances" than the job thread ever makes keeps it there.
    """
    batch = infra.moto.client("batch")
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"]
        if status == "RUNNABLE":
            infra.moto.job_transition({"progression": "manual", "times": 10**9})
            break
        time.sleep(0.02)
    assert status == "RUNNABLE", f"moto job went {status}, not RUNNABLE: pinning missed it"
    infra.moto.batch_docker_mode(False)  # later submissions finish at once again


def test_job_stuck_runnable_is_cancelled_after_the_capacity_timeout_and_escalated(
    infra, market_factory, fake_clock
):
    spec = spec_for("stuck-in-runnable")
    market = market_factory([])

    def on_event(event):
        market.on_event(event)
        if event.kind == "submitted" and event.attempt.capacity is Capacity.SPOT:
            _pin_runnable(infra, event.attempt.job_id)

    infra.moto.batch_docker_mode(True)
    infra.moto.job_transition({"progression": "time", "seconds": 1})
    runner = StepRunner(
        spec=spec,
        backend=infra.backend(),
        policy=SpotPolicy(capacity_timeout_s=600),
        store=infra.store(spec.key),
        poll_interval=60,
        clock=fake_clock,
        sleep=fake_clock.sleep,
        on_event=on_event,
    )
    result = runner.run()

    spot, on_demand = result.attempts
    assert spot.capacity is Capacity.SPOT and spot.outcome is Outcome.NO_CAPACITY
    assert "capacity" in spot.reason and "600" in spot.reason
    assert spot.started_at is None  # it never ran
    assert on_demand.capacity is Capacity.ON_DEMAND and on_demand.outcome is Outcome.SUCCEEDED
    assert "escalated" in market.kinds() and "no_capacity" in market.kinds()
    assert fake_clock.now - spot.submitted_at >= 600
    job = describe(infra, [spot.job_id])[spot.job_id]
    assert job["status"] == "RUNNABLE"  # moto keeps the cancelled job's status
    assert job["statusReason"].startswith("spot-workflows: ")  # ... but shows our terminate


def test_rerun_after_crash_between_record_and_submit_answer_reattaches(infra):
    spec = spec_for("crash-before-job-id")
    store = infra.store(spec.key)
    # the first runner recorded the attempt (write-ahead), AWS accepted the job, then the
    # runner died before writing the job id into the ledger
    ledger = Ledger.open(store, spec.key)
    attempt = ledger.begin(capacity=Capacity.SPOT, backend="aws-batch", now=time.time())
    job_id = infra.backend().submit(
        spec, job_name=attempt.job_name, attempt=1, capacity=Capacity.SPOT
    )
    assert Ledger.open(store, spec.key).attempts[0].job_id is None

    events = []
    result = StepRunner(
        spec=spec,
        backend=infra.backend(),
        store=store,
        poll_interval=0,
        sleep=lambda s: None,
        on_event=events.append,
    ).run()
    assert result.succeeded
    assert [a.job_id for a in result.attempts] == [job_id]
    assert [e.kind for e in events][:1] == ["reattached"] and "submitted" not in [
        e.kind for e in events
    ]
    named = infra.moto.client("batch").list_jobs(
        jobQueue=infra.outputs["spot_queue"],
        filters=[{"name": "JOB_NAME", "values": [attempt.job_name]}],
    )["jobSummaryList"]
    assert [j["jobId"] for j in named] == [job_id]
    assert len(infra.jobs(infra.outputs["spot_queue"])) == 1
    assert infra.jobs(infra.outputs["on_demand_queue"]) == []


class RunnerCrashed(Exception):
    pass


def test_rerun_after_crash_while_job_is_live_reattaches_by_job_id(infra, fake_clock):
    spec = spec_for("crash-while-runnable")
    store = infra.store(spec.key)

    def crash(event):
        if event.kind == "submitted":
            raise RunnerCrashed

    infra.moto.batch_docker_mode(True)  # a job that stays queued while nobody watches
    infra.moto.job_transition({"progression": "manual", "times": 10**9})
    first = StepRunner(spec=spec, backend=infra.backend(), store=store, on_event=crash)
    with pytest.raises(RunnerCrashed):
        first.run()
    [live] = Ledger.open(store, spec.key).attempts
    assert live.job_id and live.state is AttemptState.PENDING

    events = []
    second = StepRunner(
        spec=spec,
        backend=infra.backend(),
        store=store,
        policy=SpotPolicy(capacity_timeout_s=120),
        clock=fake_clock,
        sleep=fake_clock.sleep,
        poll_interval=30,
        on_event=events.append,
    )
    for _ in range(3):  # the re-run watches the same job; it submits nothing
        assert second.tick().action.value == "WAIT"
    assert [a.job_id for a in second.ledger.attempts] == [live.job_id]
    assert "submitted" not in [e.kind for e in events]
    assert [j["jobId"] for j in infra.jobs(infra.outputs["spot_queue"])] == [live.job_id]
    assert infra.jobs(infra.outputs["on_demand_queue"]) == []


def test_iam_policy_grants_every_call_the_runtime_makes(infra, market_factory):
    from spot_workflows.backends.aws_events import EventConsumer
    from spot_workflows.backends.aws_iam import allows, iam_policy

    called: set[str] = set()

    def record(model, **_):
        called.add(f"{model.service_model.signing_name}:{model.name}")

    spec = spec_for("iam-coverage")
    backend = infra.backend()
    consumer = EventConsumer(
        queue_url=infra.outputs["events_queue_url"], region="us-east-1", endpoint_url=infra.moto.url
    )
    for client in (backend.batch, consumer.sqs):
        client.meta.events.register("before-call", record)
    market = market_factory([RECLAIM])
    runner = StepRunner(
        spec=spec,
        backend=backend,
        store=infra.store(spec.key),
        poll_interval=0,
        sleep=lambda s: None,
        on_event=market.on_event,
    )
    runner.run()
    backend.find(runner.ledger.attempts[0].job_name)
    backend.cancel(runner.ledger.attempts[0].job_id, reason="spot-workflows: test")
    infra.moto.client("sqs").send_message(QueueUrl=consumer.queue_url, MessageBody="{}")
    consumer.poll()
    assert {"batch:SubmitJob", "batch:ListJobs", "sqs:DeleteMessageBatch"} <= called
    policy = iam_policy(region="us-east-1", account="123456789012")
    assert [a for a in sorted(called) if not allows(policy, a)] == []


def test_container_hosts_come_from_ecs(infra):
    from spot_workflows.backends.aws_batch import container_hosts

    ecs, ec2 = infra.moto.client("ecs"), infra.moto.client("ec2")
    ecs.create_cluster(clusterName="gpu-cluster")
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="g5.xlarge"
    )["Instances"][0]
    arn = ecs.register_container_instance(
        cluster="gpu-cluster",
        instanceIdentityDocument=f'{{"instanceId": "{instance["InstanceId"]}"}}',
    )["containerInstance"]["containerInstanceArn"]
    hosts = container_hosts(ecs, [arn, "TBD"])
    assert hosts == {
        arn: {
            "instance_id": instance["InstanceId"],
            "instance_type": "g5.xlarge",
            "zone": instance["Placement"]["AvailabilityZone"],
        }
    }


def test_batch_level_retry_strategy_is_registered_with_the_definition(infra):
    backend = infra.backend(batch_retries=2)
    arn = backend.ensure_job_definition(spec_for("in-place-retries"))
    assert backend.ensure_job_definition(spec_for("in-place-retries")) == arn  # registered once
    [jd] = infra.moto.client("batch").describe_job_definitions(jobDefinitions=[arn])[
        "jobDefinitions"
    ]
    assert jd["retryStrategy"]["attempts"] == 3
    rules = jd["retryStrategy"]["evaluateOnExit"]  # (moto lowercases the action; AWS ignores case)
    assert [(r.get("onStatusReason"), r.get("onReason"), r["action"].upper()) for r in rules] == [
        ("Host EC2*", None, "RETRY"),
        (None, "*", "EXIT"),
    ]
    # a second backend (another process) finds the ACTIVE definition instead of a new revision
    assert infra.backend(batch_retries=2).ensure_job_definition(spec_for("in-place-retries")) == arn
