"""EventBridge envelope parsing, botocore error translation, retry bounds, IAM matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)

from spot_workflows.backends.aws_errors import RetryPolicy, error_code, is_retryable, translate
from spot_workflows.backends.aws_events import MalformedEvent, StepIndex, parse_event
from spot_workflows.backends.aws_iam import allows, iam_policy
from spot_workflows.core.outcomes import NoticeKind, Outcome
from spot_workflows.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CredentialsError,
    NotFoundError,
)

T0 = "2026-11-23T08:20:00Z"
WHEN = datetime(2026, 11, 23, 8, 20, tzinfo=UTC)


def envelope(detail_type: str, detail, **extra) -> dict:
    return {"version": "0", "detail-type": detail_type, "time": T0, "detail": detail, **extra}


def test_interruption_warning_gets_the_two_minute_deadline_and_the_step():
    index = StepIndex()
    index.track("train", job_id="job-1", instance_id="i-0abc")
    notice = parse_event(
        envelope(
            "EC2 Spot Instance Interruption Warning",
            {"instance-id": "i-0abc", "instance-action": "stop"},
            source="aws.ec2",
        ),
        index=index,
    )
    assert notice.kind is NoticeKind.INTERRUPTION and notice.action == "stop"
    assert notice.deadline == WHEN + timedelta(minutes=2) and notice.seen_at == WHEN
    assert (notice.step_key, notice.job_id, notice.instance_id) == ("train", "job-1", "i-0abc")


def test_without_an_event_time_the_receive_time_is_used():
    received = datetime(2026, 1, 1, tzinfo=UTC)
    raw = envelope("EC2 Spot Instance Interruption Warning", {"instance-id": "i-1"})
    raw["time"] = "yesterday"
    notice = parse_event(raw, received_at=received)
    assert notice.deadline == received + timedelta(minutes=2) and notice.step_key is None


def test_rebalance_is_advisory_without_deadline():
    notice = parse_event(envelope("EC2 Instance Rebalance Recommendation", {"instance-id": "i-2"}))
    assert notice.kind is NoticeKind.REBALANCE and notice.deadline is None


def test_batch_state_change_maps_by_job_id_then_environment_then_tag():
    detail = {
        "jobId": "job-9",
        "jobName": "k-abc-a1",
        "status": "FAILED",
        "statusReason": "Host EC2 (instance i-0fff) terminated.",
        "container": {"environment": [{"name": "SPOT_STEP_KEY", "value": "from-env"}]},
        "tags": {"spot-workflows:step": "from-tag"},
    }
    index = StepIndex()
    index.track("from-index", job_id="job-9")
    assert (
        parse_event(envelope("Batch Job State Change", detail), index=index).step_key
        == "from-index"
    )
    event = parse_event(envelope("Batch Job State Change", detail))
    assert event.step_key == "from-env" and event.observation.outcome is Outcome.PREEMPTED
    assert event.notice.kind is NoticeKind.PREEMPTED and event.notice.instance_id == "i-0fff"
    no_env = {k: v for k, v in detail.items() if k != "container"}
    assert parse_event(envelope("Batch Job State Change", no_env)).step_key == "from-tag"


def test_exit_143_after_a_seen_warning_is_a_reclaim():
    detail = {"jobId": "j", "status": "FAILED", "container": {"exitCode": 143}}
    raw = envelope("Batch Job State Change", detail)
    assert parse_event(raw).observation.outcome is Outcome.APP_ERROR
    assert parse_event(raw, noticed_jobs={"j"}).observation.outcome is Outcome.PREEMPTED
    assert parse_event(raw).notice is None


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"detail-type": "EC2 Instance State-change Notification", "detail": {}},
        {"detail-type": "Batch Job State Change", "detail": []},
        {"detail-type": "Batch Job State Change", "detail": {"jobId": "j"}},
        {"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {"instance-id": 5}},
    ],
)
def test_malformed_envelopes_raise_malformed_event(raw):
    with pytest.raises(MalformedEvent):
        parse_event(raw)


def client_error(code: str, message: str = "m", status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "SubmitJob",
    )


TRANSLATIONS = [
    (NoCredentialsError(), CredentialsError, "AWS_ACCESS_KEY_ID"),
    (NoRegionError(), ConfigError, "AWS_DEFAULT_REGION"),
    (client_error("UnrecognizedClientException", status=403), CredentialsError, "rejected"),
    (client_error("ExpiredTokenException", status=403), CredentialsError, "AWS_SESSION_TOKEN"),
    (client_error("AccessDeniedException", status=403), CredentialsError, "--print-iam-policy"),
    (client_error("ClientException", "Job queue q does not exist"), NotFoundError, "bootstrap"),
    (client_error("ClientException", "JobQueue q not found"), NotFoundError, "does not exist"),
    (client_error("InvalidSubnetID.NotFound"), NotFoundError, "does not exist"),
    (client_error("InvalidInstanceType"), ConfigError, "describe-instance-types"),
    (
        client_error("ClientException", "Instance type p9.huge is not supported"),
        ConfigError,
        "instance type",
    ),
    (client_error("InsufficientInstanceCapacity"), CapacityError, "quota"),
    (client_error("ValidationException", "bad name"), ConfigError, "bad name"),
    (client_error("TooManyRequestsException", status=429), BackendError, "throttling"),
    (client_error("ServerException", status=500), BackendError, "kept failing"),
    (
        client_error("ClientException", "Job name should match valid pattern"),
        BackendError,
        "refused",
    ),
    (EndpointConnectionError(endpoint_url="https://batch.x"), BackendError, "cannot reach"),
]


@pytest.mark.parametrize("exc,kind,text", TRANSLATIONS)
def test_translate(exc, kind, text):
    err = translate(exc, action="batch:SubmitJob", what="AWS Batch job queue 'q'", region="r-1")
    assert type(err) is kind
    assert text in str(err)


def test_error_code_is_recovered_from_an_xml_body():
    xml = "<ErrorResponse><Error><Code>InvalidClientTokenId</Code><Message>bad</Message></Error>"
    exc = client_error("403", xml, status=403)
    assert error_code(exc) == "InvalidClientTokenId"
    assert isinstance(translate(exc, action="batch:DescribeJobs"), CredentialsError)


def test_what_is_retried():
    assert is_retryable(client_error("ThrottlingException"))
    assert is_retryable(client_error("Anything", status=503))
    assert is_retryable(EndpointConnectionError(endpoint_url="x"))
    assert not is_retryable(client_error("ClientException"))
    assert not is_retryable(NoCredentialsError())


def test_backoff_is_capped_and_bounded():
    policy = RetryPolicy(max_attempts=6, base_s=0.5, cap_s=4.0)
    assert [policy.delay(n, rng=lambda: 1.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(3, rng=lambda: 0.0) == 0.0
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(base_s=5, cap_s=1)


def test_iam_policy_runtime_vs_bootstrap():
    runtime = iam_policy(region="us-east-1", account="1")
    for action in (
        "batch:SubmitJob",
        "batch:DescribeJobs",
        "batch:ListJobs",
        "batch:TerminateJob",
        "batch:RegisterJobDefinition",
        "batch:DescribeJobDefinitions",
        "ecs:DescribeContainerInstances",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
    ):
        assert allows(runtime, action), action
    assert not allows(runtime, "batch:CreateComputeEnvironment")
    assert not allows(runtime, "s3:GetObject")  # no bucket given
    assert allows(iam_policy(checkpoint_bucket="b"), "s3:GetObject")
    assert allows(iam_policy(bootstrap=True), "events:PutRule")
    assert not any(st["Action"] == "*" for st in runtime["Statement"])
    assert allows(
        {"Statement": [{"Effect": "Allow", "Action": "batch:Describe*"}]}, "batch:DescribeJobs"
    )
    assert not allows({"Statement": [{"Effect": "Deny", "Action": "*"}]}, "batch:DescribeJobs")
