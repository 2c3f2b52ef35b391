"""Table-driven tests of the provider-status classifier (pure code, no fakes)."""

import pytest

from spot_workflows.core.classify import (
    aws_capacity_starved,
    aws_reclaimed_instance,
    classify_aws,
    classify_gcp,
    classify_local,
    gcp_exit_code_from_events,
)
from spot_workflows.core.outcomes import AttemptState as S
from spot_workflows.core.outcomes import Outcome as O

AWS_CASES = [
    # status, statusReason, exit code, notice_seen -> (state, outcome)
    ("SUBMITTED", None, None, False, S.PENDING, None),
    ("RUNNABLE", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - no p3", None, False, S.PENDING, None),
    ("STARTING", None, None, False, S.PENDING, None),
    ("RUNNING", None, None, False, S.RUNNING, None),
    ("SUCCEEDED", "Essential container in task exited", 0, False, S.DONE, O.SUCCEEDED),
    (
        "FAILED",
        "Host EC2 (instance i-0abc123def4567890) terminated.",
        None,
        False,
        S.DONE,
        O.PREEMPTED,
    ),
    (
        "FAILED",
        "Host EC2 (instance i-0abc123def4567890) terminated.",
        143,
        False,
        S.DONE,
        O.PREEMPTED,
    ),
    ("FAILED", "Essential container in task exited", 143, True, S.DONE, O.PREEMPTED),
    ("FAILED", "Essential container in task exited", 143, False, S.DONE, O.APP_ERROR),
    ("FAILED", "Essential container in task exited", 75, False, S.DONE, O.PREEMPTED),
    ("FAILED", "Essential container in task exited", 1, False, S.DONE, O.APP_ERROR),
    ("FAILED", "Essential container in task exited", 2, True, S.DONE, O.APP_ERROR),
    ("FAILED", "Essential container in task exited", None, False, S.DONE, O.APP_ERROR),
    (
        "FAILED",
        "OutOfMemoryError: Container killed due to memory usage",
        None,
        False,
        S.DONE,
        O.APP_ERROR,
    ),
    ("FAILED", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY", None, False, S.DONE, O.NO_CAPACITY),
    ("FAILED", "Job attempt duration exceeded timeout", 137, False, S.DONE, O.TIMEOUT),
    ("FAILED", "CannotPullContainerError: pull access denied", None, False, S.DONE, O.INFRA_ERROR),
    (
        "FAILED",
        "ResourceInitializationError: unable to pull secrets",
        None,
        False,
        S.DONE,
        O.INFRA_ERROR,
    ),
    ("FAILED", "spot-workflows: no capacity after 900s", None, False, S.DONE, O.CANCELLED),
    ("FAILED", "Terminated by user", 143, False, S.DONE, O.CANCELLED),
    ("FAILED", None, None, False, S.DONE, O.INFRA_ERROR),
    ("WEIRD", None, None, False, S.DONE, O.INFRA_ERROR),
    ("running", None, None, False, S.RUNNING, None),
]


@pytest.mark.parametrize("status,reason,code,notice,state,outcome", AWS_CASES)
def test_classify_aws(status, reason, code, notice, state, outcome):
    assert classify_aws(status, reason, code, notice_seen=notice) == (state, outcome)


def test_aws_reclaimed_instance_extracts_id():
    assert aws_reclaimed_instance("Host EC2 (instance i-0abc123) terminated.") == "i-0abc123"
    assert aws_reclaimed_instance("Host EC2 (instance i-0abc123) terminated") == "i-0abc123"
    assert aws_reclaimed_instance("Essential container in task exited") is None
    assert aws_reclaimed_instance(None) is None


def test_aws_capacity_starved_only_when_runnable():
    assert aws_capacity_starved("RUNNABLE", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY x")
    assert not aws_capacity_starved("RUNNABLE", None)
    assert not aws_capacity_starved("FAILED", "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY x")


GCP_CASES = [
    ("QUEUED", None, [], S.PENDING, None),
    ("SCHEDULED", None, [], S.PENDING, None),
    ("RUNNING", None, [], S.RUNNING, None),
    ("SUCCEEDED", 0, [], S.DONE, O.SUCCEEDED),
    ("FAILED", 50001, [], S.DONE, O.PREEMPTED),
    ("FAILED", 50002, [], S.DONE, O.INFRA_ERROR),
    ("FAILED", 50003, [], S.DONE, O.INFRA_ERROR),
    ("FAILED", 50004, [], S.DONE, O.INFRA_ERROR),
    ("FAILED", 50005, [], S.DONE, O.TIMEOUT),
    ("FAILED", 50006, [], S.DONE, O.INFRA_ERROR),
    ("FAILED", 50000, [], S.DONE, O.INFRA_ERROR),
    ("FAILED", 75, [], S.DONE, O.PREEMPTED),
    ("FAILED", 1, [], S.DONE, O.APP_ERROR),
    (
        "FAILED",
        None,
        [
            "Task state is updated from RUNNING to FAILED on zones/us-central1-a/instances/x "
            "due to Spot Preemption with exit code 50001."
        ],
        S.DONE,
        O.PREEMPTED,
    ),
    ("FAILED", None, ["Task failed with exit code 3."], S.DONE, O.APP_ERROR),
    ("FAILED", None, ["something happened"], S.DONE, O.INFRA_ERROR),
    ("FAILED", None, ["due to Spot Preemption"], S.DONE, O.PREEMPTED),
    ("DELETION_IN_PROGRESS", None, [], S.DONE, O.CANCELLED),
    ("State.RUNNING", None, [], S.RUNNING, None),
]


@pytest.mark.parametrize("state,code,events,exp_state,exp_outcome", GCP_CASES)
def test_classify_gcp(state, code, events, exp_state, exp_outcome):
    assert classify_gcp(state, code, events) == (exp_state, exp_outcome)


def test_gcp_exit_code_from_events_takes_the_last():
    events = ["with exit code 1.", "noise", "due to Spot Preemption with exit code 50001."]
    assert gcp_exit_code_from_events(events) == 50001
    assert gcp_exit_code_from_events(["nothing"]) is None


@pytest.mark.parametrize(
    "code,reclaimed,cancelled,outcome",
    [
        (0, False, False, O.SUCCEEDED),
        (75, False, False, O.PREEMPTED),
        (137, True, False, O.PREEMPTED),
        (0, True, False, O.SUCCEEDED),
        (3, False, False, O.APP_ERROR),
        (None, False, False, O.INFRA_ERROR),
        (143, False, True, O.CANCELLED),
    ],
)
def test_classify_local(code, reclaimed, cancelled, outcome):
    assert classify_local(code, reclaimed=reclaimed, cancelled=cancelled) is outcome
