"""ShardWorker in-process on a real local store: resume, in-shard checkpoints on a notice,
finishing the in-flight shard when the deadline allows, bounded application errors."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest

from spot_workflows.core.outcomes import RESERVED_EXIT_CODE, NoticeKind, TerminationNotice
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.planning import plan_row_ranges
from spot_workflows.runtime.shards.queue import ClaimSource, StaticSource
from spot_workflows.runtime.shards.worker import ShardWorker, WholeShard, run_processes
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


class SquaresJob:
    """Rows i -> "i:i*i" lines in batches of ``batch``; can stop or fail on cue."""

    suffix = ".txt"

    def __init__(self, batch=4, fail_on=(), on_batch=None):
        self.batch, self.fail_on, self.on_batch = batch, set(fail_on), on_batch
        self.calls: dict[str, int] = {}

    def batches(self, shard, start):
        self.calls[shard.id] = self.calls.get(shard.id, 0) + 1
        for i in range(shard.start + start, shard.stop, self.batch):
            if shard.id in self.fail_on:
                raise ValueError(f"bad row {i}")
            rows = min(self.batch, shard.stop - i)
            if self.on_batch:  # as if a notice arrived while this batch was processed
                self.on_batch(shard, i + rows - shard.start)
            yield rows, "".join(f"{r}:{r * r}\n" for r in range(i, i + rows)).encode()

    def combine(self, shard, parts):
        return b"".join(parts)


def expected(shard):
    return "".join(f"{r}:{r * r}\n" for r in range(shard.start, shard.stop)).encode()


def notice(seconds):
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    return TerminationNotice(kind=NoticeKind.INTERRUPTION, source="local", deadline=deadline)


@pytest.fixture
def uri(tmp_path):
    return f"file://{tmp_path / 'ckpt'}"


def make(uri, *, worker="w0", shards=None, max_failures=3):
    store = CheckpointStore(uri)
    led = ShardLedger(
        store=store,
        shards=shards or plan_row_ranges(60, 12),
        worker=worker,
        max_failures=max_failures,
    )
    return led, Checkpointer(store, handle_signals=False)


def test_a_worker_commits_every_shard_and_publishes_progress(uri):
    led, ckpt = make(uri)
    report = ShardWorker(
        ledger=led, source=ClaimSource(led), job=SquaresJob(), checkpointer=ckpt
    ).run()
    assert report.committed == [s.id for s in led.shards] and report.exit_code == 0
    assert report.rows_processed == 60
    assert all(led.read_output(s) == expected(s) for s in led.shards)
    latest = CheckpointStore(uri).latest()
    assert latest.step == 5 and latest.progress == 1.0


def test_a_notice_with_little_time_checkpoints_inside_the_shard_and_resume_skips_those_rows(uri):
    led, ckpt = make(uri)
    third = led.shards[2]

    def stop_midway(shard, offset):
        if shard.id == third.id and offset == 8:
            ckpt.request_stop(notice(0.0))  # the deadline is now: no time to finish

    job = SquaresJob(on_batch=stop_midway)
    report = ShardWorker(ledger=led, source=ClaimSource(led), job=job, checkpointer=ckpt).run()
    assert report.stopped and report.exit_code == RESERVED_EXIT_CODE
    assert report.committed == [s.id for s in led.shards[:2]] and report.checkpointed == third.id
    partial, parts = led.load_partial(third)
    assert partial.rows == 8 and len(parts) == 2

    led2, ckpt2 = make(uri)  # the next attempt
    report2 = ShardWorker(
        ledger=led2, source=ClaimSource(led2), job=SquaresJob(), checkpointer=ckpt2
    ).run()
    assert report2.rows_resumed == 8 and report2.exit_code == 0
    assert report.rows_processed + report2.rows_processed == 60  # not one row processed twice
    assert all(led2.read_output(s) == expected(s) for s in led2.shards)  # same bytes
    assert led2.load_partial(third) is None  # cleaned up after the commit


def test_a_notice_with_enough_time_finishes_the_in_flight_shard(uri):
    led, ckpt = make(uri)

    def stop_early(shard, offset):
        if shard.index == 1 and offset == 4:
            ckpt.request_stop(notice(120.0))  # AWS-style two minutes

    report = ShardWorker(
        ledger=led, source=ClaimSource(led), job=SquaresJob(on_batch=stop_early), checkpointer=ckpt
    ).run()
    assert report.stopped and report.checkpointed is None
    assert report.committed == [led.shards[0].id, led.shards[1].id]  # finished, took no new one
    assert led.objects.names("shards/partial") == []


def test_a_stop_without_deadline_uses_the_default_grace(uri):
    led, ckpt = make(uri)

    def stop(shard, offset):
        if shard.index == 0 and offset == 4:
            ckpt.request_stop()  # plain SIGTERM: no notice, no deadline

    worker = ShardWorker(
        ledger=led,
        source=ClaimSource(led),
        job=SquaresJob(on_batch=stop),
        checkpointer=ckpt,
        default_grace_s=0.0,
    )
    assert worker.run().checkpointed == led.shards[0].id


def test_an_app_error_is_recorded_and_not_retried_forever(uri):
    led, ckpt = make(uri, max_failures=2)
    bad = led.shards[1]
    job = SquaresJob(fail_on={bad.id})
    report = ShardWorker(ledger=led, source=ClaimSource(led), job=job, checkpointer=ckpt).run()
    assert job.calls[bad.id] == 2  # max_failures attempts, then given up
    assert report.failed == [bad.id] and report.dead == [bad.id]
    assert report.exit_code == 1 and report.dead_in_ledger == [bad.id]
    assert sorted(report.committed) == sorted(s.id for s in led.shards if s.id != bad.id)
    assert "ValueError: bad row 12" in led.failures(bad.id)[-1].error
    # A new attempt does not touch the dead shard again, and still reports it.
    led2, ckpt2 = make(uri, max_failures=2)
    job2 = SquaresJob()
    report2 = ShardWorker(ledger=led2, source=ClaimSource(led2), job=job2, checkpointer=ckpt2).run()
    assert job2.calls == {} and report2.exit_code == 1


def test_static_partitions_split_the_work_between_array_tasks(uri):
    reports = []
    for index in range(3):
        led, ckpt = make(uri, worker=f"a{index}")
        source = StaticSource(led, index=index, count=3)
        reports.append(ShardWorker(ledger=led, source=source, job=SquaresJob()).run())
    assert [len(r.committed) for r in reports] == [2, 2, 1]
    assert sorted(s for r in reports for s in r.committed) == sorted(s.id for s in led.shards)


def test_whole_shard_jobs_work_and_resume_from_their_single_part(uri):
    led, ckpt = make(uri)
    calls = []

    def fn(shard):
        calls.append(shard.id)
        if shard.index == 0:
            ckpt.request_stop(notice(0.0))
        return shard.rows, expected(shard)

    job = WholeShard(fn, suffix=".txt")
    assert (
        ShardWorker(ledger=led, source=ClaimSource(led), job=job, checkpointer=ckpt).run().stopped
    )
    led2, ckpt2 = make(uri)
    ShardWorker(ledger=led2, source=ClaimSource(led2), job=job, checkpointer=ckpt2).run()
    assert calls.count(led.shards[0].id) == 1  # its output was in the in-shard checkpoint
    assert all(led2.read_output(s) == expected(s) for s in led2.shards)


@pytest.mark.parametrize(
    "codes,want", [((0, 0), 0), ((0, 75), 75), ((75, 1), 1), ((0, 3), 3), ((0,), 0)]
)
def test_run_processes_combines_exit_codes(codes, want):
    commands = [[sys.executable, "-c", f"raise SystemExit({c})"] for c in codes]
    assert run_processes(commands) == want
