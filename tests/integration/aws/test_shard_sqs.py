"""Dynamic work stealing through SQS (moto server) and exclusive commits on S3 (moto).

A shard whose worker died is redelivered after the visibility timeout and committed once; a shard
failing with an application error is recorded and dead-lettered, not retried forever; a shard
whose workers keep dying is given up after a bounded number of deliveries.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.planning import plan_row_ranges
from spot_workflows.runtime.shards.queue import SqsSource, create_shard_queue, enqueue_shards
from spot_workflows.runtime.shards.worker import ShardWorker, WholeShard
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


class Counting:
    """fn(shard) for WholeShard: deterministic output; fails on ``bad``; counts calls."""

    def __init__(self, bad=()):
        self.bad, self.calls = set(bad), []

    def __call__(self, shard):
        self.calls.append(shard.id)
        if shard.id in self.bad:
            raise RuntimeError(f"cannot parse {shard.id}")
        return shard.rows, f"{shard.start}..{shard.stop}".encode()


@pytest.fixture
def sqs(moto):
    return moto.client("sqs")


def ledger(tmp_path, worker, **kw):
    store = CheckpointStore(f"file://{tmp_path / 'ckpt'}")
    return ShardLedger(store=store, shards=plan_row_ranges(60, 10), worker=worker, **kw)


def visible_and_inflight(sqs, url):
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return tuple(int(attrs[n]) for n in names)


def test_a_dead_workers_shard_is_redelivered_after_the_visibility_timeout(sqs, tmp_path):
    url, _ = create_shard_queue(sqs, "etl-redeliver", visibility_timeout_s=1, max_receives=5)
    dead = ledger(tmp_path, "dead")
    assert enqueue_shards(sqs, url, dead) == 6
    assert enqueue_shards(sqs, url, dead) == 0  # once per (ledger, queue)
    # Worker "dead" takes a shard and dies: it never deletes or releases the message.
    lost = SqsSource(dead, client=sqs, queue_url=url, visibility_timeout_s=1).next(lambda: False)
    assert lost is not None
    started = time.monotonic()
    alive = ledger(tmp_path, "alive")
    fn = Counting()
    source = SqsSource(alive, client=sqs, queue_url=url, visibility_timeout_s=1, wait_s=1)
    report = ShardWorker(ledger=alive, source=source, job=WholeShard(fn)).run()
    assert report.exit_code == 0 and len(report.committed) == 6
    assert time.monotonic() - started >= 1.0  # it had to wait for the redelivery
    assert alive.record(lost.shard.id).worker == "alive"
    assert sorted(fn.calls) == sorted(s.id for s in alive.shards)  # each shard processed once
    assert visible_and_inflight(sqs, url) == (0, 0)
    assert alive.read_output(lost.shard) == f"{lost.shard.start}..{lost.shard.stop}".encode()


def test_an_app_error_shard_is_reported_and_dead_lettered_not_retried_forever(sqs, tmp_path):
    url, dlq = create_shard_queue(sqs, "etl-apperror", visibility_timeout_s=5, max_receives=5)
    led = ledger(tmp_path, "w0", max_failures=2)
    bad = led.shards[3]
    enqueue_shards(sqs, url, led)
    fn = Counting(bad={bad.id})
    source = SqsSource(
        led, client=sqs, queue_url=url, dlq_url=dlq, visibility_timeout_s=5, retry_delay_s=0
    )
    report = ShardWorker(ledger=led, source=source, job=WholeShard(fn)).run()
    assert fn.calls.count(bad.id) == 2  # max_failures, then given up
    assert report.dead == [bad.id] and report.exit_code == 1
    assert len(report.committed) == 5 and not led.is_done(bad.id)
    failures = led.failures(bad.id)
    assert len(failures) == 2 and failures[-1].final and "cannot parse" in failures[-1].error
    assert visible_and_inflight(sqs, url) == (0, 0)  # not in the queue any more
    msgs = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(m["Body"])["shard"] for m in msgs] == [bad.id]


def test_a_shard_whose_workers_keep_dying_is_given_up_after_max_receives(sqs, tmp_path):
    url, dlq = create_shard_queue(sqs, "etl-crashy", visibility_timeout_s=30, max_receives=2)
    led = ledger(tmp_path, "w0")
    body = json.dumps({"shard": led.shards[0].id, "plan": led.digest})
    sqs.send_message(QueueUrl=url, MessageBody=body)
    for _ in range(2):  # two workers take it and die (the message comes back at once here)
        msg = sqs.receive_message(QueueUrl=url)["Messages"][0]
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"], VisibilityTimeout=0
        )
    source = SqsSource(led, client=sqs, queue_url=url, dlq_url=dlq, max_receives=2, wait_s=0)
    assert source.next(lambda: False) is None  # third delivery: recorded dead instead
    assert led.dead_ids() == {led.shards[0].id}
    assert "delivered 3 times" in led.failures(led.shards[0].id)[0].error
    assert visible_and_inflight(sqs, url) == (0, 0)


def test_a_notice_releases_the_message_without_counting_a_delivery(sqs, tmp_path):
    url, _ = create_shard_queue(sqs, "etl-release", visibility_timeout_s=30, max_receives=1)
    led = ledger(tmp_path, "w0")
    sqs.send_message(
        QueueUrl=url, MessageBody=json.dumps({"shard": led.shards[0].id, "plan": led.digest})
    )
    source = SqsSource(led, client=sqs, queue_url=url, max_receives=1, wait_s=0)
    for _ in range(3):  # three reclaims in a row: the shard is never declared dead
        lease = source.next(lambda: False)
        assert lease is not None and lease.shard == led.shards[0]
        lease.release()
    assert led.dead_ids() == set()


def test_s3_commits_are_exclusive_through_conditional_puts(moto):
    moto.client("s3").create_bucket(Bucket="shards")
    stores = [
        CheckpointStore("s3://shards/step", storage_options=moto.s3_options) for _ in range(3)
    ]
    ledgers = [
        ShardLedger(store=s, shards=plan_row_ranges(30, 10), worker=f"w{i}")
        for i, s in enumerate(stores)
    ]
    objs = ledgers[1].objects
    assert objs.create_exclusive("probe.json", b"1") and not objs.create_exclusive(
        "probe.json", b"2"
    )
    assert stores[2].read("probe.json") == b"1"
    shard = ledgers[0].shards[1]
    barrier, results = threading.Barrier(3), {}

    def commit(i):
        barrier.wait()
        results[i] = ledgers[i].commit(shard, f"by w{i}".encode(), rows=10)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in results.items() if r.won]
    assert len(winners) == 1
    assert ledgers[2].read_output(shard) == f"by w{winners[0]}".encode()
    claims = [led.try_claim(ledgers[0].shards[2], ttl_s=60) for led in ledgers]
    assert claims == [0, None, None]
    for led in ledgers[:2]:
        led.commit(led.shards[0], b"x", rows=10)
        led.publish_progress()
    latest = stores[0].latest()
    assert latest.step == 2 and latest.progress == pytest.approx(2 / 3)
