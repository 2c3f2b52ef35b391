"""EventBridge -> SQS -> EventConsumer, through the rules bootstrap created (moto server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from spot_workflows.backends.aws_events import EventConsumer, JobEvent, StepIndex
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Capacity, NoticeKind, Outcome, TerminationNotice
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner

RECLAIMED_INSTANCE = "i-0f1e2d3c4b5a69788"
RECLAIM = f"Host EC2 (instance {RECLAIMED_INSTANCE}) terminated."


def drain(consumer: EventConsumer, **kw) -> list:
    """Poll until a receive comes back empty (bounded)."""
    out = []
    for _ in range(10):
        before = consumer.stats.received
        out.extend(consumer.poll(**kw))
        if consumer.stats.received == before:
            break
    return out


def ec2_event(detail_type: str, instance: str, **detail) -> dict:
    return {
        "Source": "aws.ec2",
        "DetailType": detail_type,
        "Detail": json.dumps({"instance-id": instance, **detail}),
        "Resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance}"],
    }


def batch_event(job: dict) -> dict:
    return {
        "Source": "aws.batch",
        "DetailType": "Batch Job State Change",
        "Detail": json.dumps(job),
    }


@pytest.fixture
def consumer_for(infra):
    def make(index: StepIndex | None = None) -> EventConsumer:
        return EventConsumer(
            queue_url=infra.outputs["events_queue_url"],
            index=index,
            region="us-east-1",
            endpoint_url=infra.moto.url,
        )

    return make


def test_events_put_on_eventbridge_arrive_through_sqs_mapped_to_the_step(
    infra, market_factory, consumer_for
):
    spec = StepSpec(
        key="finetune-events",
        command=["python", "ft.py"],
        image="busybox",
        checkpoint_uri="s3://ckpt/finetune-events",
        gpus=1,
    )
    store = infra.store(spec.key)
    market = market_factory([RECLAIM])
    StepRunner(
        spec=spec,
        backend=infra.backend(),
        policy=SpotPolicy(preemption_budget=2),
        store=store,
        poll_interval=0,
        sleep=lambda s: None,
        on_event=market.on_event,
    ).run()
    reclaimed, finished = Ledger.open(store, spec.key).attempts
    assert reclaimed.instance_id == RECLAIMED_INSTANCE

    index = StepIndex()
    index.track_attempts(spec.key, [reclaimed, finished])
    batch = infra.moto.client("batch")
    jobs = batch.describe_jobs(jobs=[reclaimed.job_id, finished.job_id])["jobs"]
    by_id = {j["jobId"]: j for j in jobs}
    foreign = dict(
        by_id[finished.job_id], jobQueue="arn:aws:batch:us-east-1:123456789012:job-queue/other"
    )
    put = infra.moto.client("events").put_events(
        Entries=[
            ec2_event(
                "EC2 Spot Instance Interruption Warning",
                RECLAIMED_INSTANCE,
                **{"instance-action": "terminate"},
            ),
            ec2_event("EC2 Instance Rebalance Recommendation", "i-0123456789abcdef0"),
            batch_event(by_id[reclaimed.job_id]),
            batch_event(foreign),  # another team's queue: the rule does not route it
        ]
    )
    assert put["FailedEntryCount"] == 0

    consumer = consumer_for(index)
    events = drain(consumer)
    assert consumer.stats.received == 3 and consumer.stats.deleted == 3
    notices = [e for e in events if isinstance(e, TerminationNotice)]
    job_events = [e for e in events if isinstance(e, JobEvent)]

    [warning] = [n for n in notices if n.kind is NoticeKind.INTERRUPTION]
    assert warning.step_key == spec.key and warning.job_id == reclaimed.job_id
    assert warning.action == "terminate" and warning.source == "eventbridge"
    assert warning.deadline - warning.seen_at == timedelta(minutes=2)
    assert abs(warning.seen_at - datetime.now(UTC)) < timedelta(minutes=1)

    [rebalance] = [n for n in notices if n.kind is NoticeKind.REBALANCE]
    assert rebalance.step_key is None and rebalance.deadline is None  # not our instance
    assert consumer.stats.unmapped == 1

    [job_event] = job_events
    assert job_event.step_key == spec.key and job_event.job_id == reclaimed.job_id
    assert job_event.observation.outcome is Outcome.PREEMPTED
    assert job_event.notice.kind is NoticeKind.PREEMPTED
    assert job_event.notice.instance_id == RECLAIMED_INSTANCE

    # nothing is left on the queue
    assert consumer.poll() == [] and consumer.stats.received == 3


def test_batch_event_of_an_unindexed_job_maps_by_its_environment(infra, consumer_for):
    spec = StepSpec(
        key="prep-unindexed", command=["true"], image="busybox", checkpoint_uri="s3://ckpt/p"
    )
    backend = infra.backend()
    job_id = backend.submit(spec, job_name="prep-unindexed-x-a1", attempt=1, capacity=Capacity.SPOT)
    job = infra.moto.client("batch").describe_jobs(jobs=[job_id])["jobs"][0]
    infra.moto.client("events").put_events(Entries=[batch_event(job)])
    [event] = drain(consumer_for())
    assert isinstance(event, JobEvent)
    assert event.step_key == "prep-unindexed" and event.observation.outcome is Outcome.SUCCEEDED


def test_malformed_messages_are_counted_and_deleted_never_raised(infra, consumer_for):
    sqs = infra.moto.client("sqs")
    url = infra.outputs["events_queue_url"]
    bodies = [
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"detail-type": "EC2 Instance State-change Notification", "detail": {}}),
        json.dumps({"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {}}),
        json.dumps({"detail-type": "Batch Job State Change", "detail": {"status": "FAILED"}}),
        json.dumps({"detail-type": "EC2 Instance Rebalance Recommendation", "detail": "x"}),
    ]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps(
            {
                "detail-type": "EC2 Instance Rebalance Recommendation",
                "time": "2026-11-23T10:00:00Z",
                "detail": {"instance-id": "i-0abc"},
            }
        ),
    )
    consumer = consumer_for()
    events = drain(consumer)
    assert consumer.stats.malformed == len(bodies)
    assert consumer.stats.parsed == 1 and consumer.stats.deleted == len(bodies) + 1
    [event] = events
    assert event.kind is NoticeKind.REBALANCE
    assert event.seen_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0"
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_failing_handler_leaves_its_message_for_redelivery(infra, consumer_for):
    infra.moto.client("events").put_events(
        Entries=[ec2_event("EC2 Spot Instance Interruption Warning", "i-0aaa")]
    )
    consumer = consumer_for()
    seen = []

    def handler(event):
        seen.append(event)
        raise RuntimeError("downstream is down")

    assert drain(consumer, handler=handler) == []
    assert len(seen) == 1 and consumer.stats.handler_errors == 1 and consumer.stats.deleted == 0
    attrs = infra.moto.client("sqs").get_queue_attributes(
        QueueUrl=infra.outputs["events_queue_url"], AttributeNames=["All"]
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessagesNotVisible"] == "1"  # SQS will redeliver it
