"""Pure AWS Batch shapes: DescribeJobs job -> Observation, StepSpec -> job definition."""

from __future__ import annotations

import pytest

from spot_workflows.backends.aws_jobs import (
    cluster_of,
    container_instance_arn,
    env_of,
    job_definition,
    job_definition_name,
    observation_from_job,
    retry_strategy,
)
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import AttemptState as S
from spot_workflows.core.outcomes import Outcome as O
from spot_workflows.errors import ConfigError

RECLAIM = "Host EC2 (instance i-0abc123def4567890) terminated."
CI_ARN = "arn:aws:ecs:us-east-1:123456789012:container-instance/gpu-cluster/0123456789abcdef"


def job(status, reason=None, exit_code=None, attempts=(), **extra):
    out = {"jobId": "j-1", "jobName": "step-a1", "status": status, **extra}
    if reason is not None:
        out["statusReason"] = reason
    if exit_code is not None:
        out["container"] = {"exitCode": exit_code}
    out["attempts"] = list(attempts)
    return out


CASES = [
    # job, notice_seen -> state, outcome, exit code, instance id
    (job("SUBMITTED"), False, S.PENDING, None, None, None),
    (
        job("RUNNABLE", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - x"),
        False,
        S.PENDING,
        None,
        None,
        None,
    ),
    (job("RUNNING", startedAt=1_700_000_000_000), False, S.RUNNING, None, None, None),
    (
        job("SUCCEEDED", "Essential container in task exited", 0),
        False,
        S.DONE,
        O.SUCCEEDED,
        0,
        None,
    ),
    (job("FAILED", RECLAIM), False, S.DONE, O.PREEMPTED, None, "i-0abc123def4567890"),
    (
        # the reclaim is only in the last attempt; the job reason is generic
        job(
            "FAILED",
            "Essential container in task exited",
            143,
            attempts=[{"statusReason": RECLAIM, "container": {"exitCode": 143}}],
        ),
        False,
        S.DONE,
        O.PREEMPTED,
        143,
        "i-0abc123def4567890",
    ),
    (job("FAILED", "Essential container in task exited", 1), False, S.DONE, O.APP_ERROR, 1, None),
    (
        job("FAILED", "Essential container in task exited", 143),
        True,
        S.DONE,
        O.PREEMPTED,
        143,
        None,
    ),
    (
        # exit code only in the attempt
        job(
            "FAILED",
            "Essential container in task exited",
            attempts=[{"container": {"exitCode": 2}}],
        ),
        False,
        S.DONE,
        O.APP_ERROR,
        2,
        None,
    ),
    (
        # a more specific container reason turns an app error into an infra fault
        {
            **job("FAILED", "Essential container in task exited"),
            "container": {
                "exitCode": 1,
                "reason": "ResourceInitializationError: unable to pull secrets",
            },
        },
        False,
        S.DONE,
        O.INFRA_ERROR,
        1,
        None,
    ),
    (job("FAILED", "spot-workflows: no capacity"), False, S.DONE, O.CANCELLED, None, None),
    (job("FAILED"), False, S.DONE, O.INFRA_ERROR, None, None),
]


@pytest.mark.parametrize("raw,notice,state,outcome,code,instance", CASES)
def test_observation_from_job(raw, notice, state, outcome, code, instance):
    obs = observation_from_job(raw, notice_seen=notice)
    assert (obs.job_id, obs.state, obs.outcome) == ("j-1", state, outcome)
    assert obs.exit_code == code and obs.instance_id == instance


def test_observation_times_are_epoch_seconds():
    obs = observation_from_job(
        job("SUCCEEDED", startedAt=1_700_000_000_500, stoppedAt=1_700_000_100_000)
    )
    assert obs.started_at == 1_700_000_000.5 and obs.ended_at == 1_700_000_100.0
    assert observation_from_job(job("RUNNABLE", startedAt=0)).started_at is None
    # a job queued again (Batch-level retry, or not started yet) has not started this time
    queued = job("RUNNABLE", attempts=[{"startedAt": 1_700_000_000_000, "stoppedAt": 1}])
    assert observation_from_job(queued).started_at is None
    assert observation_from_job(job("RUNNING", stoppedAt=1_700_000_000_000)).ended_at is None


def spec(**kw) -> StepSpec:
    base = dict(
        key="train.v2", command=["python", "t.py"], image="img:1", checkpoint_uri="s3://b/k"
    )
    return StepSpec(**{**base, **kw})


def test_job_definition_carries_image_command_resources_and_timeout():
    body = job_definition(spec(gpus=2, vcpus=7.5, memory_mib=30000, timeout_s=10))
    props = body["containerProperties"]
    assert props["image"] == "img:1" and props["command"] == ["python", "t.py"]
    assert props["resourceRequirements"] == [
        {"type": "VCPU", "value": "8"},
        {"type": "MEMORY", "value": "30000"},
        {"type": "GPU", "value": "2"},
    ]
    assert body["timeout"] == {"attemptDurationSeconds": 60}  # Batch's minimum
    assert "retryStrategy" not in body and "environment" not in props
    cpu_only = job_definition(spec(vcpus=1))["containerProperties"]["resourceRequirements"]
    assert [r["type"] for r in cpu_only] == ["VCPU", "MEMORY"] and cpu_only[0]["value"] == "1"
    with pytest.raises(ConfigError, match="vcpus >= 1 and memory_mib >= 4"):
        job_definition(spec(vcpus=0.5))  # fractional vCPUs are Fargate-only; EC2 refuses them
    assert job_definition(spec(), wrap=True)["containerProperties"]["command"][:2] == [
        "spot-run",
        "--",
    ]


def test_batch_level_retry_only_retries_reclaims_and_ends_with_exit():
    strategy = job_definition(spec(), batch_retries=2)["retryStrategy"]
    assert strategy["attempts"] == 3
    rules = strategy["evaluateOnExit"]
    assert rules[0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}
    assert rules[-1] == {"onReason": "*", "action": "EXIT"}
    assert len(rules) <= 5
    assert all(
        "*" not in v[:-1] for r in rules for k, v in r.items() if k.startswith("on")
    )  # AWS only allows a trailing *
    assert retry_strategy(0) is None
    with pytest.raises(ConfigError, match="between 0 and 9"):
        retry_strategy(10)


def test_job_definition_needs_an_image():
    with pytest.raises(ConfigError, match="StepSpec.image"):
        job_definition(spec(image=None))


def test_job_definition_name_is_stable_valid_and_changes_with_the_spec():
    a = job_definition_name("spot-workflows", "train.v2=x", job_definition(spec()))
    assert a == job_definition_name("spot-workflows", "train.v2=x", job_definition(spec()))
    assert a.startswith("spot-workflows-train-v2-x-") and len(a) <= 128
    assert all(c.isalnum() or c in "-_" for c in a)
    assert a != job_definition_name("spot-workflows", "train.v2=x", job_definition(spec(gpus=1)))
    assert len(job_definition_name("p", "k" * 200, {})) <= 128


def test_container_instance_and_environment_helpers():
    assert cluster_of(CI_ARN) == "gpu-cluster"
    assert cluster_of("TBD") is None and cluster_of("") is None
    raw = job("RUNNING", attempts=[{"container": {"containerInstanceArn": CI_ARN}}])
    assert container_instance_arn(raw) == CI_ARN
    assert (
        container_instance_arn(
            job("RUNNING", attempts=[{"container": {"containerInstanceArn": "TBD"}}])
        )
        is None
    )
    env = {"container": {"environment": [{"name": "SPOT_STEP_KEY", "value": "k"}, {"bad": 1}]}}
    assert env_of(env) == {"SPOT_STEP_KEY": "k"}
