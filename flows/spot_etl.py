"""ETL preprocessing on spot capacity: shard-by-shard checkpoints, resumed after a reclaim.

Runs on the local backend out of the box::

    python flows/spot_etl.py

A task writes synthetic raw text shards (stand-ins for your landing zone); the spot step
(``flows/steps/preprocess.py``, plain CPU work) normalizes and tokenizes them shard by shard,
checkpointing after each shard. The market reclaims the first spot attempt; the second spot
attempt resumes at the next unprocessed shard (the preemption budget is not spent, so no
escalation). A last task checks every input row came out exactly once.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

from prefect import flow, task

from spot_workflows.prefect import LocalBackendBlock, SpotPolicyBlock, run_spot_step

STEP_SCRIPT = Path(__file__).resolve().parent / "steps" / "preprocess.py"
TEXT = (
    "spot capacity is cheap and the reclaim notice gives the worker time to save a checkpoint "
    "so the next attempt resumes where the last one stopped on demand costs more"
)
WORDS = TEXT.split(" ")


@task
def make_raw_shards(*, directory: str, shards: int, rows_per_shard: int, seed: int) -> int:
    """Write ``shards`` JSONL files of synthetic text records; returns the number of rows."""
    rng = random.Random(seed)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    row_id = 0
    for shard in range(shards):
        with (out / f"part-{shard:04d}.jsonl").open("w") as f:
            for _ in range(rows_per_shard):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
                f.write(json.dumps({"id": row_id, "text": text.capitalize() + "."}) + "\n")
                row_id += 1
    return row_id


@task
def check_output(*, directory: str, expected_rows: int) -> dict:
    """Every input row appears exactly once in the output shards."""
    ids = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        ids += [json.loads(line)["id"] for line in path.read_text().splitlines()]
    if sorted(ids) != list(range(expected_rows)):
        raise RuntimeError(f"expected rows 0..{expected_rows - 1} once each, got {len(ids)} rows")
    vocab = json.loads((Path(directory) / "vocab.json").read_text())
    return {"rows": len(ids), "top_tokens": list(vocab)[:5]}


@flow(name="spot-etl", log_prints=True)
def spot_etl(
    shards: int = 12,
    rows_per_shard: int = 2000,
    shard_seconds: float = 0.3,
    reclaim_after_s: list[float] | None = None,
    seed: int = 11,
    workdir: str | None = None,
) -> dict:
    """Preprocess raw text shards on spot; the first spot attempt is reclaimed by default."""
    root = Path(workdir or tempfile.mkdtemp(prefix="spot-etl-")).resolve()
    rows = make_raw_shards(
        directory=str(root / "raw"), shards=shards, rows_per_shard=rows_per_shard, seed=seed
    )
    result = run_spot_step(
        name="preprocess",
        command=[
            sys.executable,
            str(STEP_SCRIPT),
            f"--input={root / 'raw'}",
            f"--output={root / 'clean'}",
            f"--shard-seconds={shard_seconds}",
        ],
        backend=LocalBackendBlock(
            state_dir=str(root / "backend"),
            checkpoint_root=f"file://{root / 'checkpoints'}",
            reclaim_after_s=[3.0] if reclaim_after_s is None else reclaim_after_s,
            notice_window_s=1.0,
        ),
        policy=SpotPolicyBlock(preemption_budget=3, capacity_timeout_s=120),
        retries=1,
        poll_interval=0.2,
        vcpus=1,
        memory_mib=512,
    )
    check = check_output(directory=str(root / "clean"), expected_rows=rows)
    summary = {
        "step_key": result.step_key,
        "attempts": [
            {
                "capacity": a.capacity.value,
                "outcome": a.outcome.value if a.outcome else None,
                "resumed_from_shard": a.resumed_from_step or 0,
            }
            for a in result.attempts
        ],
        **check,
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    spot_etl()
