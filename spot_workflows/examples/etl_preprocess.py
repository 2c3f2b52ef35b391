"""A small, real ETL preprocessing step that checkpoints per shard (CPU only, deterministic).

Generates ``--shards`` shards of synthetic sensor records (each derived from (seed, shard), so any
shard can be recomputed anywhere), cleans them (drops readings outside the physical range),
standardizes them and folds per-shard statistics into running totals. After every shard the totals
go into a checkpoint; a reclaimed attempt resumes at the next shard. The last line printed is JSON
with the totals and a checksum that does not depend on how many times the step was interrupted.

Run under spot-workflows (``SPOT_CHECKPOINT_URI`` set), e.g. from the example DAG
``spot_etl_preprocess``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time

LOW, HIGH = -40.0, 60.0  # valid temperature range, degrees C


def shard_stats(seed: int, shard: int, rows: int) -> dict:
    rng = random.Random(seed * 7_919 + shard)
    values = [rng.gauss(20.0, 15.0) for _ in range(rows)]
    clean = [v for v in values if LOW <= v <= HIGH]
    mean = sum(clean) / len(clean) if clean else 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / len(clean)) if clean else 0.0
    z = [(v - mean) / std for v in clean] if std else [0.0 for _ in clean]
    return {
        "rows": rows,
        "kept": len(clean),
        "dropped": rows - len(clean),
        "sum": sum(clean),
        "outliers": sum(1 for x in z if abs(x) > 3),
    }


def fold(totals: dict, stats: dict) -> dict:
    return {k: totals.get(k, 0) + v for k, v in stats.items()}


def checksum(totals: dict) -> str:
    return hashlib.sha256(json.dumps(totals, sort_keys=True).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--rows", type=int, default=20_000, help="records per shard")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--shard-seconds", type=float, default=0.0, help="extra pause per shard")
    args = ap.parse_args(argv)

    from spot_workflows.runtime.checkpoint import Checkpointer

    ckpt = Checkpointer.from_env(every_steps=1)
    restored = ckpt.restore()
    state = json.loads(restored.read("state.json")) if restored else {"shard": 0, "totals": {}}
    print(f"RESUME {state['shard']}" if restored else "START 0", flush=True)
    while state["shard"] < args.shards:
        stats = shard_stats(args.seed, state["shard"], args.rows)
        state = {"shard": state["shard"] + 1, "totals": fold(state["totals"], stats)}
        files = {"state.json": json.dumps(state).encode()}
        progress = state["shard"] / args.shards
        print(f"STEP {state['shard']}", flush=True)
        if ckpt.stop_requested:
            ckpt.emergency_save(state["shard"], files, progress=progress)
            ckpt.exit_preempted()
        ckpt.save(state["shard"], files, progress=progress)
        if args.shard_seconds:
            time.sleep(args.shard_seconds)
    totals = state["totals"]
    print(json.dumps({"totals": totals, "checksum": checksum(totals)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
