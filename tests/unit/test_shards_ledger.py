"""ShardLedger on a real local store (file://) and memory://: exclusive commits, records,
in-shard checkpoints, failures, claims and progress checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from spot_workflows.errors import CheckpointError, ConfigError, CorruptCheckpointError
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.objects import ShardObjects
from spot_workflows.runtime.shards.planning import plan_row_ranges
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def uri(tmp_path):
    return f"file://{tmp_path / 'ckpt'}"


def ledger_for(uri, worker="w0", shards=None, **kw):
    return ShardLedger(
        store=CheckpointStore(uri), shards=shards or plan_row_ranges(100, 10), worker=worker, **kw
    )


def test_racing_threads_commit_a_shard_exactly_once(uri):
    ledgers = [ledger_for(uri, worker=f"w{i}") for i in range(8)]
    shard = ledgers[0].shards[3]
    barrier = threading.Barrier(len(ledgers))
    results = {}

    def go(led):
        barrier.wait()
        results[led.worker] = led.commit(shard, f"out of {led.worker}".encode(), rows=10)

    threads = [threading.Thread(target=go, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w, c in results.items() if c.won]
    assert len(winners) == 1
    record = ledgers[0].record(shard.id)
    assert record.worker == winners[0] and all(c.record == record for c in results.values())
    assert ledgers[0].read_output(shard) == f"out of {winners[0]}".encode()
    # The losers removed their output objects: exactly one object under out/<id>/.
    assert ledgers[0].objects.names(f"shards/out/{shard.id}") == [record.object.rsplit("/")[-1]]
    # A later commit does not even write.
    again = ledgers[1].commit(shard, b"late", rows=10)
    assert not again.won and again.record == record


def test_marker_records_rows_bytes_and_sha256_and_output_is_verified(uri):
    led = ledger_for(uri)
    shard = led.shards[0]
    commit = led.commit(shard, b"hello world", rows=10, suffix=".txt")
    rec = commit.record
    assert commit.won and rec.object.endswith(".txt") and rec.rows == 10 and rec.bytes == 11
    assert rec.sha256 == hashlib.sha256(b"hello world").hexdigest()
    raw = json.loads(led.store.read(f"shards/done/{shard.id}.json"))
    assert raw["sha256"] == rec.sha256 and raw["object"] == rec.object
    path = led.objects.abs(rec.object)
    with open(path, "wb") as f:
        f.write(b"hello WORLD")  # corrupted behind our back
    with pytest.raises(CorruptCheckpointError, match="does not match"):
        led.read_output(shard)
    with pytest.raises(CheckpointError, match="not committed"):
        led.read_output(led.shards[1])


def test_commit_streams_a_file_and_export_writes_parts_in_plan_order(uri, tmp_path):
    led = ledger_for(uri, shards=plan_row_ranges(20, 10))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(100_000))
    led.commit(led.shards[1], src, rows=10)
    led.commit(led.shards[0], b"first", rows=10)
    paths = led.export(tmp_path / "export", suffix=".bin")
    assert [p.name for p in paths] == ["part-000000.bin", "part-000001.bin"]
    assert paths[0].read_bytes() == b"first" and paths[1].read_bytes() == src.read_bytes()


def test_a_different_plan_on_the_same_uri_is_refused(uri):
    ledger_for(uri, shards=plan_row_ranges(100, 10))
    ledger_for(uri, shards=plan_row_ranges(100, 10), worker="w1")  # same plan: fine
    with pytest.raises(ConfigError, match="different shard plan"):
        ledger_for(uri, shards=plan_row_ranges(100, 20))


def test_an_unreadable_marker_is_reported_with_the_fix(uri):
    led = ledger_for(uri)
    led.store.write_atomic(f"shards/done/{led.shards[0].id}.json", b"{not json")
    with pytest.raises(CorruptCheckpointError, match="delete it"):
        led.record(led.shards[0].id)


def test_failures_are_bounded_then_the_shard_is_dead(uri):
    led = ledger_for(uri, max_failures=3)
    other = ledger_for(uri, worker="w1", max_failures=3)
    shard = led.shards[4]
    assert not led.fail(shard, "ValueError: bad row").final
    assert not other.fail(shard, "ValueError: bad row").final  # counted across workers
    assert led.dead_ids() == set()
    assert led.fail(shard, "ValueError: bad row").final
    assert led.dead_ids() == {shard.id} and other.dead_ids() == {shard.id}
    assert [f.worker for f in led.failures(shard.id)] == ["w0", "w1", "w0"]
    status = led.status()
    assert status["dead"] == [shard.id] and not status["complete"]
    for s in led.shards:
        if s.id != shard.id:
            led.commit(s, b"x", rows=10)
    assert led.status()["complete"]  # nothing left to do: done or dead


def test_in_shard_checkpoint_round_trip_and_damage_falls_back_to_row_zero(uri):
    led = ledger_for(uri)
    shard = led.shards[2]
    assert led.load_partial(shard) is None
    first = led.save_partial(shard, [(3, b"aaa"), (3, b"bbb")], base=None)
    second = led.save_partial(shard, [(2, b"cc")], base=first)
    loaded, parts = led.load_partial(shard)
    assert loaded == second and loaded.rows == 8 and parts == [b"aaa", b"bbb", b"cc"]
    with open(led.objects.abs(second.parts[1].object), "wb") as f:
        f.write(b"BBB")
    assert led.load_partial(shard) is None  # damaged: redo the shard from row 0
    led.clear_partial(shard)
    assert led.objects.names("shards/partial") == []


def test_claims_are_exclusive_expire_and_come_back_to_a_restarted_worker(uri):
    clock = Clock()
    a = ledger_for(uri, worker="a", clock=clock)
    b = ledger_for(uri, worker="b", clock=clock)
    shard = a.shards[0]
    gen = a.try_claim(shard, ttl_s=60)
    assert gen == 0 and b.try_claim(shard, ttl_s=60) is None
    clock.now += 30
    assert a.renew_claim(shard, gen, ttl_s=60)
    clock.now += 45  # 75 s after the claim, 45 after the renewal: still held
    assert b.try_claim(shard, ttl_s=60) is None
    a_again = ledger_for(uri, worker="a", clock=clock)  # worker "a" restarted
    assert a_again.try_claim(shard, ttl_s=60) == 1
    assert not a.renew_claim(shard, gen, ttl_s=60)  # the old process lost it
    clock.now += 61
    assert b.try_claim(shard, ttl_s=60) == 2  # expired: taken over
    b.release_claim(shard, 2)
    assert a.try_claim(shard, ttl_s=60) == 3  # released: free at once
    a.commit(shard, b"x", rows=10)
    assert a.objects.names(f"shards/claims/{shard.id}") == []


def test_progress_checkpoints_feed_latest_and_the_checkpointer(uri):
    led = ledger_for(uri, shards=plan_row_ranges(100, 25), progress_every_s=0)
    for s in led.shards[:3]:
        led.commit(s, b"x", rows=25)
        led.publish_progress()
    latest = CheckpointStore(uri).latest()
    assert latest.step == 3 and latest.progress == pytest.approx(0.75)
    assert latest.metadata["kind"] == "shards"
    restored = Checkpointer(CheckpointStore(uri), handle_signals=False).restore()
    assert json.loads(restored.read("shards.json"))["done"] == 3
    assert CheckpointStore(uri).steps() == [1, 2, 3]
    led.commit(led.shards[3], b"x", rows=25)
    other = ledger_for(uri, worker="w1", shards=plan_row_ranges(100, 25))
    assert other.publish_progress() == 1.0
    assert other.publish_progress() is None  # at most every progress_every_s (5 s)
    led.publish_progress()  # step 4 already published by w1: nothing new
    assert CheckpointStore(uri).latest().progress == 1.0
    assert CheckpointStore(uri).steps() == [2, 3, 4]  # pruned to keep_last=3


def test_forced_publish_repairs_a_missing_progress_checkpoint(uri):
    led = ledger_for(uri, shards=plan_row_ranges(20, 10))
    for s in led.shards:
        led.commit(s, b"x", rows=10)
    # A worker that won the claim for step 2 died before saving it.
    assert led.objects.create_exclusive("shards/progress/000000002", b"")
    assert led.publish_progress() == 1.0 and CheckpointStore(uri).latest() is None
    fresh = ledger_for(uri, worker="w9", shards=plan_row_ranges(20, 10))
    fresh.publish_progress(force=True)
    assert CheckpointStore(uri).latest().step == 2


def test_exclusive_create_never_exposes_a_partial_marker(tmp_path):
    objs = ShardObjects(CheckpointStore(f"file://{tmp_path}"))
    assert objs.create_exclusive("a/b.json", b"1")
    assert not objs.create_exclusive("a/b.json", b"2")
    assert (tmp_path / "a" / "b.json").read_bytes() == b"1"
    assert os.listdir(tmp_path / "a") == ["b.json"]  # no temp files left behind


def test_memory_store_works_in_process():
    led = ShardLedger(
        store=CheckpointStore("memory://shards-unit-test"), shards=plan_row_ranges(10, 5)
    )
    assert led.commit(led.shards[0], b"m", rows=5).won
    assert not led.commit(led.shards[0], b"n", rows=5).won
    assert led.read_output(led.shards[0]) == b"m"
    led.store.fs.rm(led.store.root, recursive=True)
