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

Where things live: everything goes under one root, ``workdir`` if given, else a directory under
``$SPOT_WORKFLOWS_HOME`` (``~/.spot-workflows``) named after the deployment (or the flow) and a
digest of the parameters, never a temporary directory: a retried flow run (after a crash, or
``prefect flow-run retry``) computes the same root, finds its step's ledger there and re-attaches
to the job still running instead of submitting another. Once the step succeeded and its output
was checked, the flow deletes its scratch data (the generated raw input and the per-shard
intermediate files); it keeps the step's ledger and checkpoints (small) and the exported Parquet
files in ``output``, if you asked for them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from prefect import flow, task
from prefect.runtime import deployment, flow_run

from spot_workflows.prefect import LocalBackendBlock, SpotPolicyBlock, run_spot_step
from spot_workflows.prefect.blocks import spot_workflows_home
from spot_workflows.runtime.shards.ledger import ROOT as SHARDS
from spot_workflows.runtime.shards.objects import ShardObjects
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

CHECKED = "checked.json"
"""Written in a run's scratch directory once its output was checked and its scratch deleted."""


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


@task
def clean_scratch(*, scratch: str, checkpoint_uri: str, check: dict) -> dict:
    """Delete the raw input, the per-shard intermediate outputs (copied to the export) and, with
    no ``output`` asked for, the export itself; keep the step's ledger and checkpoints. Records
    the check first, so a retry of a run that got this far does not look for deleted files."""
    run_dir = Path(scratch)
    (run_dir / CHECKED).write_text(json.dumps(check))
    store = CheckpointStore(checkpoint_uri)
    ShardObjects(store).rm(f"{SHARDS}/out", recursive=True)
    for child in run_dir.iterdir():
        if child.name != CHECKED:
            shutil.rmtree(child, ignore_errors=True)
    return {"scratch_deleted": True}


def default_root(parameters: dict) -> Path:
    """``$SPOT_WORKFLOWS_HOME/flows/spot-etl/<deployment or flow>-<digest of the parameters>``:
    the same for every try of a flow run (a retry keeps its deployment and parameters)."""
    owner = deployment.name or "flow"
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:12]
    return spot_workflows_home() / "flows" / "spot-etl" / f"{owner}-{digest}"


@flow(name="spot-etl", log_prints=True)
def spot_etl(
    rows: int = 1_000_000,
    rows_per_file: int = 25_000,
    workers: int = 2,
    reclaim_after_s: list[float] | None = None,
    delay_s: float = 0.0,
    workdir: str | None = None,
    output: str | None = None,
    state_dir: str | None = None,
) -> dict:
    """Preprocess ``rows`` rows on spot; the first spot attempt is reclaimed by default.

    ``workdir`` holds the step's checkpoints and ledger and each run's scratch data (default: a
    stable directory under ``$SPOT_WORKFLOWS_HOME``, see the module's docs). ``output`` is where
    the preprocessed Parquet files are kept; without it they are checked, then deleted with the
    scratch data. ``state_dir`` is the local spot cloud's state directory; by default the
    machine's shared one (``$SPOT_WORKFLOWS_LOCAL_DIR``, else ``~/.spot-workflows/local``).
    """
    params = {
        "rows": rows,
        "rows_per_file": rows_per_file,
        "workers": workers,
        "reclaim_after_s": reclaim_after_s,
        "delay_s": delay_s,
        "output": output,
    }
    root = (Path(workdir).expanduser() if workdir else default_root(params)).resolve()
    scratch = root / "runs" / (flow_run.id or "local")
    export = Path(output).expanduser().resolve() if output else scratch / "output"
    result = run_spot_step(
        name="preprocess",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.etl_shards",
            f"--data={scratch / 'raw'}",
            f"--rows={rows}",
            f"--rows-per-file={rows_per_file}",
            f"--workers={workers}",
            f"--delay-s={delay_s}",
            "--verify",
            f"--export={export}",
        ],
        backend=LocalBackendBlock(
            state_dir=state_dir,
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
    checked = scratch / CHECKED
    if checked.exists():  # a retry of a run whose output was checked and scratch deleted
        check = json.loads(checked.read_text())
    else:
        check = check_output(directory=str(export), expected_rows=rows)
        check |= clean_scratch(
            scratch=str(scratch), checkpoint_uri=result.checkpoint_uri, check=check
        )
    summary = {
        "step_key": result.step_key,
        "checkpoint_uri": result.checkpoint_uri,
        "output": str(export) if output else None,
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
