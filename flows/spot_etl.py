"""ETL preprocessing on spot capacity: 1M rows, two workers, resumed at the next shard after a reclaim.

Runs on the local backend out of the box::

    python flows/spot_etl.py

The spot step (``spot_workflows.examples.etl_shards``) generates its raw dataset (messy text in
Parquet files, deterministic from the seed), then two worker processes claim shards through the
shard ledger next to the step's checkpoints: each row is normalised, tokenised and
feature-hashed, one Parquet output per shard, committed by an atomic marker. The market reclaims
the first spot attempt; the workers finish or checkpoint their in-flight shard, and the next spot
attempt resumes at the next unfinished shard (no shard processed twice, the preemption budget is
not spent, so no escalation). ``--verify`` compares every shard byte for byte with an
uninterrupted run; a last task reads the exported Parquet and checks every row came out once.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from prefect import flow, task

from spot_workflows.prefect import LocalBackendBlock, SpotPolicyBlock, run_spot_step


@task
def check_output(*, directory: str, expected_rows: int) -> dict:
    """Every input row appears exactly once in the exported Parquet outputs."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(Path(directory).glob("part-*.parquet"))
    if not files:
        raise RuntimeError(f"no outputs under {directory}; did the step export them?")
    table = pq.read_table(files, columns=["id", "n_tokens"])
    rows, distinct = table.num_rows, pc.count_distinct(table["id"]).as_py()
    if rows != expected_rows or distinct != rows:
        raise RuntimeError(f"expected {expected_rows} rows once each, got {rows} ({distinct})")
    return {"rows": rows, "files": len(files), "tokens": pc.sum(table["n_tokens"]).as_py()}


@flow(name="spot-etl", log_prints=True)
def spot_etl(
    rows: int = 1_000_000,
    rows_per_file: int = 25_000,
    workers: int = 2,
    reclaim_after_s: list[float] | None = None,
    delay_s: float = 0.0,
    workdir: str | None = None,
) -> dict:
    """Preprocess ``rows`` rows on spot; the first spot attempt is reclaimed by default."""
    root = Path(workdir or tempfile.mkdtemp(prefix="spot-etl-")).resolve()
    result = run_spot_step(
        name="preprocess",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.etl_shards",
            f"--data={root / 'raw'}",
            f"--rows={rows}",
            f"--rows-per-file={rows_per_file}",
            f"--workers={workers}",
            f"--delay-s={delay_s}",
            "--verify",
            f"--export={root / 'clean'}",
        ],
        backend=LocalBackendBlock(
            state_dir=str(root / "backend"),
            checkpoint_root=f"file://{root / 'checkpoints'}",
            reclaim_after_s=[6.0] if reclaim_after_s is None else reclaim_after_s,
            notice_window_s=2.0,
        ),
        policy=SpotPolicyBlock(preemption_budget=3, capacity_timeout_s=120),
        retries=1,
        poll_interval=0.2,
        vcpus=workers,
        memory_mib=2048,
    )
    check = check_output(directory=str(root / "clean"), expected_rows=rows)
    summary = {
        "step_key": result.step_key,
        "checkpoint_uri": result.checkpoint_uri,
        "attempts": [
            {
                "capacity": a.capacity.value,
                "outcome": a.outcome.value if a.outcome else None,
                "resumed_from_shards_done": a.resumed_from_step or 0,
            }
            for a in result.attempts
        ],
        **check,
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    spot_etl()
