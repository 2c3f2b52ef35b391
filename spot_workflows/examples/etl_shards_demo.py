"""The sharded ETL example end to end on the local backend, with spot reclaims, from a terminal.

``etl_shards`` runs as the step command (``--workers N`` real worker processes claiming shards);
the simulated market reclaims the first spot attempts (``--reclaims``, seconds after each
start): each time the workers get the notice, finish or checkpoint their in-flight shard and exit
75; the runner resubmits and the next attempt resumes at the next unfinished shard. A rich
progress bar follows the ledger. At the end every shard's output is compared byte for byte with
an uninterrupted run, and every row id must appear exactly once. Prints a JSON summary::

    python -m spot_workflows.examples.etl_shards_demo --rows 1000000 --workers 2 --reclaims 6,6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.examples.etl_shards import EtlJob, plan, verify
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.worker import LedgerProgress
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


def run(
    *,
    workdir: Path,
    rows: int,
    rows_per_file: int,
    workers: int,
    reclaims: tuple[float, ...],
    seed: int = 7,
    notice_window_s: float = 2.0,
    batch_rows: int = 4096,
    delay_s: float = 0.0,
    progress: bool = False,
) -> dict:
    """Run the step to the end on the local backend; return the summary (with ``verify``)."""
    data = workdir / "raw"
    shards = plan(data, rows=rows, rows_per_file=rows_per_file, seed=seed)
    uri = f"file://{(workdir / 'checkpoints' / 'etl-shards').resolve()}"
    spec = StepSpec(
        key="etl-shards",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.etl_shards",
            f"--data={data}",
            f"--rows={rows}",
            f"--rows-per-file={rows_per_file}",
            f"--seed={seed}",
            f"--workers={workers}",
            f"--batch-rows={batch_rows}",
            f"--delay-s={delay_s}",
        ],
        checkpoint_uri=uri,
    )
    ledger = ShardLedger(store=CheckpointStore(uri), shards=shards, worker="demo")
    policy = SpotPolicy(preemption_budget=len(reclaims) + 1, capacity_timeout_s=60)
    started = time.time()
    with (
        LocalBackend(
            state_dir=workdir / "backend",
            market=ScheduledMarket(reclaims=reclaims),
            notice_window_s=notice_window_s,
        ) as backend,
        LedgerProgress(ledger, enabled=progress),
    ):
        try:
            result = StepRunner(spec=spec, backend=backend, policy=policy, poll_interval=0.2).run()
            logs = [backend.log_path(a.job_id).read_text() for a in result.attempts if a.job_id]
        finally:
            backend.shutdown()  # the demo's own local cloud: nothing outlives it
    wall = time.time() - started
    reports = [
        json.loads(line.split(" ", 1)[1])
        for text in logs
        for line in text.splitlines()
        if line.startswith("REPORT ")
    ]
    committed = [s for r in reports for s in r["committed"]]
    checked = verify(ledger, EtlJob(data, batch_rows=batch_rows))
    latest = ledger.store.latest()
    return {
        "rows": rows,
        "shards": len(shards),
        "workers": workers,
        "attempts": [
            {
                "capacity": a.capacity.value,
                "outcome": a.outcome.value if a.outcome else None,
                "exit_code": a.exit_code,
                "resumed_from_shards_done": a.resumed_from_step or 0,
            }
            for a in result.attempts
        ],
        "rows_processed": sum(r["rows_processed"] for r in reports),
        "rows_resumed_in_shard": sum(r["rows_resumed"] for r in reports),
        "commits": len(committed),
        "duplicate_commits": len(committed) - len(set(committed)),
        "progress": latest.progress if latest else None,
        "wall_seconds": round(wall, 2),
        "verify": checked,
        "checkpoint_uri": uri,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-file", type=int, default=25_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reclaims", default="6,6", help="seconds after each spot start, comma list")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spot-etl-shards-"))
    reclaims = tuple(float(x) for x in args.reclaims.split(",") if x.strip())
    summary = run(
        workdir=workdir,
        rows=args.rows,
        rows_per_file=args.rows_per_file,
        workers=args.workers,
        reclaims=reclaims,
        progress=sys.stderr.isatty(),
    )
    print(json.dumps(summary, indent=1))
    return 0 if summary["verify"]["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
