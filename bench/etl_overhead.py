"""Shard ledger overhead and rows re-processed per reclaim, on the sharded ETL example.

Prints one JSON object. Not a timed test: figures for docs/etl.md.

    .venv/bin/python bench/etl_overhead.py [--rows 1000000] [--rows-per-file 50000] [--reclaims 6]

* ``overhead``: the example's preprocessing (normalise, tokenise, feature-hash, Parquet) over
  ``--rows`` rows, once as plain processing (each shard's Parquet written to a local file) and once
  through the ledger (claim, commit marker, fsync, progress checkpoint per shard), in-process,
  alternating, ``--repeats`` times each; figures from the fastest run of each (this machine is
  shared). ``ledger_only_s_per_shard`` times the ledger alone (a job whose output is precomputed:
  claim, sha256, write + fsync, marker, progress), ``plain_write_s_per_shard`` a plain write of the
  same bytes; ``overhead_ledger_only`` is their difference over the plain time per shard: the
  overhead without the noise of the processing itself.
* ``reprocessed``: a real worker process is reclaimed ``--reclaims`` times at seeded random moments,
  three ways: SIGKILL with no notice, a notice with no time left (GCP-like: checkpoint inside the
  shard), and a 2-minute notice (AWS: finish the in-flight shard). Rows processed by every run
  (counted per batch by the worker) minus the dataset's rows = rows re-processed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.examples.etl_shards import EtlJob, plan
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.queue import ClaimSource
from spot_workflows.runtime.shards.worker import ShardWorker
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

SEED = 7


def plain(job: EtlJob, shards, out: Path) -> None:
    out.mkdir(parents=True)
    for shard in shards:
        (out / f"{shard.id}{job.suffix}").write_bytes(job.reference(shard))


def ledgered(job, shards, uri: str) -> None:
    led = ShardLedger(store=CheckpointStore(uri), shards=shards)
    report = ShardWorker(ledger=led, source=ClaimSource(led), job=job).run()
    assert len(report.committed) == len(shards), report


class Precomputed:
    """A job whose output is already computed: running it times the ledger alone."""

    def __init__(self, outputs: dict[str, bytes]) -> None:
        self.outputs, self.suffix = outputs, ".parquet"

    def batches(self, shard, start):
        yield shard.rows, self.outputs[shard.id]

    def combine(self, shard, parts):
        return parts[0]


def overhead(args, work: Path) -> dict:
    shards = plan(work / "raw", rows=args.rows, rows_per_file=args.rows_per_file, seed=SEED)
    job = EtlJob(work / "raw")
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "ledger": []}
    for i in range(args.repeats):
        for name in ("plain", "ledger"):
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "plain":
                plain(job, shards, work / f"plain-{i}")
            else:
                ledgered(job, shards, f"file://{work / f'ledger-{i}'}")
            runs[name].append((time.perf_counter() - t0, time.process_time() - c0))
    few = shards[:8]
    outputs = {s.id: job.reference(s) for s in few}
    only, write = [], []  # seconds per shard: ledger alone, and a plain write of the same bytes
    for i in range(7):
        t0 = time.perf_counter()
        ledgered(Precomputed(outputs), few, f"file://{work / f'only-{i}'}")
        only.append((time.perf_counter() - t0) / len(few))
        (work / f"write-{i}").mkdir()
        t0 = time.perf_counter()
        for shard in few:
            (work / f"write-{i}" / shard.id).write_bytes(outputs[shard.id])
        write.append((time.perf_counter() - t0) / len(few))
    plain_wall, plain_cpu = min(runs["plain"])
    led_wall, led_cpu = min(runs["ledger"])
    per_shard = plain_wall / len(shards)
    return {
        "rows": args.rows,
        "shards": len(shards),
        "plain_s": round(plain_wall, 3),
        "ledger_s": round(led_wall, 3),
        "rows_per_s_plain": round(args.rows / plain_wall),
        "rows_per_s_ledger": round(args.rows / led_wall),
        "overhead_wall": round(led_wall / plain_wall - 1, 4),
        "overhead_cpu": round(led_cpu / plain_cpu - 1, 4),
        "output_bytes_per_shard": round(sum(map(len, outputs.values())) / len(few)),
        "plain_s_per_shard": round(per_shard, 4),
        "ledger_only_s_per_shard": round(min(only), 4),
        "plain_write_s_per_shard": round(min(write), 4),
        "overhead_ledger_only": round((min(only) - min(write)) / per_shard, 4),
        "runs": {k: [round(w, 3) for w, _ in v] for k, v in runs.items()},
    }


def worker_main(argv: list[str]) -> int:
    """One worker process: the example's job, counting rows per batch into a file."""
    data, rows, per_file, counter = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    shards = plan(data, rows=rows, rows_per_file=per_file, seed=SEED)
    with Checkpointer.from_env() as ckpt, open(counter, "a") as out:
        led = ShardLedger(store=ckpt.store, shards=shards, worker="w0")

        def count(shard, n):
            out.write(f"{n}\n")
            out.flush()

        job = EtlJob(data)
        ShardWorker(
            ledger=led, source=ClaimSource(led), job=job, checkpointer=ckpt, on_batch=count
        ).run()
        sys.stdout.flush()
        return 75 if ckpt.stop_requested and not led.status()["complete"] else 0


def reprocessed(args, work: Path, mode: str) -> dict:
    rows, per_file = args.reclaim_rows, args.reclaim_rows_per_file
    data = work / "raw-reclaim"
    plan(data, rows=rows, rows_per_file=per_file, seed=SEED)
    uri = f"file://{work / f'reclaim-{mode}'}"
    counter, notice_file = work / f"count-{mode}.txt", work / f"notice-{mode}.json"
    env = dict(os.environ, SPOT_CHECKPOINT_URI=uri, SPOT_NOTICE_FILE=str(notice_file))
    cmd = [sys.executable, __file__, "--_worker", str(data), str(rows), str(per_file), str(counter)]
    rng = random.Random(args.seed)
    reclaims = 0
    for _ in range(args.reclaims + 50):
        notice_file.unlink(missing_ok=True)
        seen = len(counter.read_text().split()) if counter.exists() else 0
        proc = subprocess.Popen(cmd, env=env)
        if reclaims < args.reclaims:  # reclaim at a random moment once it is processing
            while proc.poll() is None and (
                not counter.exists() or len(counter.read_text().split()) == seen
            ):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.1, 1.5))
        if reclaims < args.reclaims and proc.poll() is None:
            if mode == "sigkill":
                proc.kill()
            else:
                left = 0.0 if mode == "notice-now" else 120.0
                deadline = datetime.now(UTC) + timedelta(seconds=left)
                notice = TerminationNotice(
                    kind=NoticeKind.INTERRUPTION, source="local", deadline=deadline
                )
                notice_file.write_text(notice.model_dump_json())
                proc.send_signal(signal.SIGTERM)
            reclaims += 1
        if proc.wait() == 0:
            break
    total = sum(int(x) for x in counter.read_text().split())
    again = total - rows
    return {
        "reclaims": reclaims,
        "rows_reprocessed": again,
        "rows_reprocessed_per_reclaim": round(again / max(reclaims, 1), 1),
        "in_flight_shard_rows": per_file,
    }


def main() -> int:
    if sys.argv[1:2] == ["--_worker"]:
        return worker_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-file", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reclaims", type=int, default=6)
    ap.add_argument("--reclaim-rows", type=int, default=600_000)
    ap.add_argument("--reclaim-rows-per-file", type=int, default=25_000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="spot-etl-bench-") as tmp:
        work = Path(tmp)
        result = {"overhead": overhead(args, work), "reprocessed": {}}
        for mode in ("sigkill", "notice-now", "notice-2min"):
            result["reprocessed"][mode] = reprocessed(args, work, mode)
    out = io.StringIO()
    json.dump(result, out, indent=1)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
