"""Sharded ETL with real worker processes, real signals and the local backend: whatever the
reclaims, the output equals the uninterrupted output byte for byte, every row exactly once, and
no shard is ever committed twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.examples import etl_shards, etl_shards_demo
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.planning import plan_row_ranges
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

ROWS, PER_FILE, BATCH = 24_000, 3_000, 500


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "raw"
    shards = etl_shards.plan(data, rows=ROWS, rows_per_file=PER_FILE, seed=7)
    uri = f"file://{tmp_path / 'ckpt'}"
    ledger = ShardLedger(store=CheckpointStore(uri), shards=shards, worker="test")
    return data, uri, ledger


def start_worker(data: Path, uri: str, worker: str, notice_file: Path, delay_s: float):
    env = dict(os.environ, SPOT_CHECKPOINT_URI=uri, SPOT_NOTICE_FILE=str(notice_file))
    notice_file.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "spot_workflows.examples.etl_shards",
        f"--data={data}",
        f"--rows={ROWS}",
        f"--rows-per-file={PER_FILE}",
        f"--batch-rows={BATCH}",
        f"--delay-s={delay_s}",
        f"--worker-id={worker}",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def report_of(proc: subprocess.Popen) -> dict | None:
    out = proc.stdout.read() if proc.stdout else ""
    lines = [ln for ln in out.splitlines() if ln.startswith("REPORT ")]
    return json.loads(lines[-1].split(" ", 1)[1]) if lines else None


def send_notice(proc: subprocess.Popen, notice_file: Path, seconds: float) -> None:
    """What spot-run does: write the notice (with its deadline), then SIGTERM the worker."""
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    notice = TerminationNotice(kind=NoticeKind.INTERRUPTION, source="local", deadline=deadline)
    notice_file.write_text(notice.model_dump_json())
    proc.send_signal(signal.SIGTERM)


def test_seeded_reclaims_of_real_workers_leave_exactly_the_uninterrupted_output(setup, tmp_path):
    data, uri, ledger = setup
    rng = random.Random(20260909)
    notices = {w: tmp_path / f"notice-{w}.json" for w in ("w0", "w1")}
    procs = {w: start_worker(data, uri, w, notices[w], 0.03) for w in notices}
    reports, kills = [], []
    for _ in range(4):
        time.sleep(rng.uniform(0.6, 1.6))
        victim = rng.choice(sorted(procs))
        how = rng.choice(["SIGKILL", "notice-now", "notice-later"])
        if how == "SIGKILL":
            procs[victim].kill()
        else:
            send_notice(procs[victim], notices[victim], 0.0 if how == "notice-now" else 30.0)
        code = procs[victim].wait(timeout=30)
        kills.append((victim, how, code))
        # 75: stopped on the notice; -15: the notice came while it was still importing.
        assert code in (-signal.SIGKILL, -signal.SIGTERM, 75, 0), kills
        reports.append(report_of(procs[victim]))
        procs[victim] = start_worker(data, uri, victim, notices[victim], 0.03)
    for proc in procs.values():
        assert proc.wait(timeout=90) == 0, kills
        reports.append(report_of(proc))
    assert {how for _, how, _ in kills} >= {"SIGKILL"}, kills  # the seed exercises a real kill

    result = etl_shards.verify(ledger, etl_shards.EtlJob(data, batch_rows=BATCH))
    assert result["verified"], result
    assert result["rows"] == result["distinct_rows"] == ROWS
    committed = [s for r in reports if r for s in r["committed"]]
    assert len(committed) == len(set(committed))  # reported commits never overlap
    # Only a stopped-by-notice worker may have left an in-shard checkpoint; all are consumed.
    assert ledger.objects.names("shards/partial") == []
    latest = CheckpointStore(uri).latest()
    assert latest.step == len(ledger.shards) and latest.progress == 1.0


def test_a_short_notice_checkpoints_inside_the_shard_and_nothing_is_processed_twice(
    setup, tmp_path
):
    data, uri, ledger = setup
    notice_file = tmp_path / "notice.json"
    proc = start_worker(data, uri, "w0", notice_file, 0.08)
    deadline = time.time() + 30
    while not ledger.done_ids() and time.time() < deadline:  # let it commit a shard
        time.sleep(0.05)
    time.sleep(0.3)  # and get into the next one
    send_notice(proc, notice_file, 0.0)
    assert proc.wait(timeout=30) == 75
    first = report_of(proc)
    assert first["stopped"] and first["checkpointed"] and first["committed"]
    proc = start_worker(data, uri, "w0", notice_file, 0.0)
    assert proc.wait(timeout=60) == 0
    second = report_of(proc)
    assert second["rows_resumed"] > 0
    assert first["rows_processed"] + second["rows_processed"] == ROWS  # zero rows re-processed
    result = etl_shards.verify(ledger, etl_shards.EtlJob(data, batch_rows=BATCH))
    assert result["verified"], result


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from spot_workflows.runtime.shards.ledger import ShardLedger
    from spot_workflows.runtime.shards.planning import plan_row_ranges
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    uri, worker, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    led = ShardLedger(store=CheckpointStore(uri), shards=plan_row_ranges(4000, 100), worker=worker)
    (go.parent / f"ready-{worker}").touch()
    while not go.exists():
        time.sleep(0.001)
    for shard in led.shards:
        if led.commit(shard, f"{shard.id} by {worker}".encode(), rows=100).won:
            print(shard.id, flush=True)
    """
)


def test_racing_worker_processes_never_commit_the_same_shard(tmp_path):
    uri, go = f"file://{tmp_path / 'ckpt'}", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, uri, f"p{i}", str(go)], stdout=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    deadline = time.time() + 60  # all imported and spinning (imports take seconds under load)
    while len(list(tmp_path.glob("ready-p*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    wins = {f"p{i}": p.communicate(timeout=60)[0].split() for i, p in enumerate(procs)}
    everything = [s for ids in wins.values() for s in ids]
    assert len(everything) == len(set(everything)) == 40
    assert sum(1 for ids in wins.values() if ids) >= 2, wins  # they really raced
    led = ShardLedger(store=CheckpointStore(uri), shards=plan_row_ranges(4000, 100), worker="x")
    for worker, ids in wins.items():
        for shard_id in ids:
            shard = led.shard(shard_id)
            assert led.read_output(shard) == f"{shard_id} by {worker}".encode()


def test_local_backend_reclaims_a_multi_worker_step_and_the_output_is_exact(tmp_path):
    summary = etl_shards_demo.run(
        workdir=tmp_path,
        rows=16_000,
        rows_per_file=2_000,
        workers=2,
        reclaims=(3.0,),  # mid-work: each worker has >= 3.2 s of batches (delay) to do
        notice_window_s=1.0,
        batch_rows=500,
        delay_s=0.2,
    )
    outcomes = [a["outcome"] for a in summary["attempts"]]
    assert outcomes == ["PREEMPTED", "SUCCEEDED"], summary
    assert summary["attempts"][0]["exit_code"] == 75
    assert summary["verify"]["verified"], summary
    assert summary["duplicate_commits"] == 0 and summary["commits"] == 8
    assert summary["progress"] == 1.0
    # A reclaim costs at most the in-flight shard of each worker.
    assert summary["rows_processed"] <= 16_000 + 2 * 2_000
