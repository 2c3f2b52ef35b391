"""Parsing GCP Batch Pub/Sub notifications: every shape a subscriber may hand us, and junk."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest

from spot_workflows.backends.gcp_events import GcpNotificationConsumer, parse_notification
from spot_workflows.core.outcomes import AttemptState, NoticeKind, Outcome

JOB = "projects/proj/locations/us-central1/jobs/train-abc-a1"
PREEMPT = (
    "Task state is updated from RUNNING to FAILED on zones/us-central1-a/instances/42 due to "
    "Spot Preemption with exit code 50001."
)
TASK_ATTRS = {
    "Type": "TASK_STATE_CHANGED",
    "JobName": JOB,
    "JobUID": "train-abc-a1-1234",
    "NewTaskState": "FAILED",
    "TaskUID": "train-abc-a1-1234-group0-0",
    "Region": "us-central1",
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "message",
    [
        SimpleNamespace(attributes=TASK_ATTRS, data=PREEMPT.encode()),  # pubsub_v1 Message
        {"attributes": TASK_ATTRS, "data": b64(PREEMPT)},  # REST pull
        {"message": {"attributes": TASK_ATTRS, "data": b64(PREEMPT)}, "subscription": "s"},  # push
        json.dumps({"message": {"attributes": TASK_ATTRS, "data": b64(PREEMPT)}}),
        {"attributes": {k.lower(): v for k, v in TASK_ATTRS.items()}, "data": b64(PREEMPT)},
    ],
    ids=["pubsub-object", "rest", "push-envelope", "json-string", "lowercase-keys"],
)
def test_task_preemption_in_every_shape(message):
    n = parse_notification(message)
    assert n is not None
    assert (n.type, n.new_state, n.job_id, n.exit_code) == (
        "TASK_STATE_CHANGED",
        "FAILED",
        JOB,
        50001,
    )
    assert n.preempted and n.outcome == (AttemptState.DONE, Outcome.PREEMPTED)
    notice = n.notice(step_key="train", now=1_800_000_000)
    assert notice.kind is NoticeKind.PREEMPTED and notice.source == "gcp-batch"
    assert (notice.job_id, notice.step_key, notice.instance_id) == (JOB, "train", "42")
    assert notice.detail["task_uid"] == "train-abc-a1-1234-group0-0"
    assert notice.seen_at.timestamp() == 1_800_000_000


def test_job_state_changes_become_observations():
    running = parse_notification(
        {"attributes": {"Type": "JOB_STATE_CHANGED", "JobUID": "u1", "NewJobState": "RUNNING"}}
    )
    assert running.job_id == "u1" and not running.preempted and running.notice() is None
    assert running.observation().state is AttemptState.RUNNING
    failed = parse_notification(
        {
            "attributes": {"Type": "JOB_STATE_CHANGED", "JobName": JOB, "NewJobState": "FAILED"},
            "data": b64("Job failed ... task with exit code 1."),
        }
    )
    assert failed.observation().outcome is Outcome.APP_ERROR and not failed.preempted
    timeout = parse_notification(
        {"attributes": {**TASK_ATTRS, "ExitCode": "50005"}, "data": b64("max run duration")}
    )
    assert timeout.exit_code == 50005 and timeout.outcome[1] is Outcome.TIMEOUT
    assert not timeout.preempted


def test_json_data_bodies_are_understood():
    body = json.dumps({"description": PREEMPT, "ExitCode": 50001})
    n = parse_notification({"attributes": TASK_ATTRS, "data": b64(body)})
    assert n.preempted and n.description == PREEMPT


@pytest.mark.parametrize(
    "message",
    [
        None,
        42,
        b"\xff\xfe not json",
        "not json either",
        {},
        {"attributes": None, "data": None},
        {"attributes": {"Type": "SOMETHING_ELSE", "JobName": JOB}},
        {"attributes": {"Type": "TASK_STATE_CHANGED", "JobName": JOB}},  # no new state
        {"attributes": {"Type": "JOB_STATE_CHANGED", "NewJobState": "FAILED"}},  # no job
        {"attributes": ["not", "a", "mapping"]},
        {"message": "not a mapping"},
        SimpleNamespace(attributes=TASK_ATTRS, data=object()),
    ],
)
def test_malformed_messages_are_ignored_never_raised(message):
    assert parse_notification(message) is None
    assert GcpNotificationConsumer().handle(message) is None


def test_consumer_uses_known_steps_and_skips_non_preemptions():
    consumer = GcpNotificationConsumer(steps={JOB: "train"}, clock=lambda: 1_800_000_000.0)
    messages = [
        {"attributes": TASK_ATTRS, "data": b64(PREEMPT)},
        {"attributes": {**TASK_ATTRS, "NewTaskState": "RUNNING"}, "data": b64("running")},
        "garbage",
        {"attributes": {**TASK_ATTRS, "JobName": JOB + "x"}, "data": b64(PREEMPT)},
    ]
    notices = consumer.handle_all(messages)
    assert [(n.job_id, n.step_key) for n in notices] == [(JOB, "train"), (JOB + "x", None)]
