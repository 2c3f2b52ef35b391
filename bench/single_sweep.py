"""Single-placement sweep: ``deadline`` (ours) against ``greedy`` and ``uniform_progress``.

Prints one JSON object. Not a timed test: figures for docs/policies.md and issue #18.

    .venv/bin/python bench/single_sweep.py [--starts 60] [--workers 2] [--traces DIR]

The dev traces (the 8 traces of ``aws-10-26-2022``, 600 s ticks), W = 48 h,
D in {50, 52, 56, 64, 70, 80, 96} h x d in {0.02, 0.05, 0.2, 0.5, 1.0} h, S = 60 scenarios per
trace, every scenario through ``core.planner.decide`` tick by tick. Per cell: the mean cost
fraction (of all-on-demand) of each policy, deadline misses, ours / greedy and ours / UP. Summary:
the worst ratio against each baseline, the cells where ours costs more than either, total misses.
The target (issue #18): no cell where ours costs more than greedy or UP, and 0 misses.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from spot_workflows.sim.grid import Cell, ratio, run_trace, summarise
from spot_workflows.sim.traces import Trace, load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "spot_workflows/data/traces/aws-10-26-2022"
OURS = "deadline"
BASELINES = ("greedy", "uniform_progress")
POLICIES = (OURS, *BASELINES)
DEADLINES_H = (50.0, 52.0, 56.0, 64.0, 70.0, 80.0, 96.0)
OVERHEADS_H = (0.02, 0.05, 0.2, 0.5, 1.0)
WORK_H = 48.0


def _job(job: tuple[Trace, Cell, str]) -> dict:
    return run_trace(*job)


def sweep(
    traces: list[Trace],
    starts: int,
    workers: int,
    deadlines_h: tuple[float, ...] = DEADLINES_H,
    overheads_h: tuple[float, ...] = OVERHEADS_H,
) -> dict:
    cells = [Cell(WORK_H, dl, oh, starts) for dl in deadlines_h for oh in overheads_h]
    jobs = [(t, c, n) for c in cells for n in POLICIES for t in traces]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_job, jobs, chunksize=4))
    else:
        results = [_job(j) for j in jobs]
    rows, it = [], iter(results)
    for c in cells:
        row: dict = {"deadline_hours": c.deadline_hours, "restart_hours": c.restart_hours}
        for n in POLICIES:
            s = summarise(n, c, [next(it) for _ in traces])
            row[n] = s["mean_cost_fraction"]
            row[f"{n}_misses"] = s["deadline_misses"]
        for b in BASELINES:
            row[f"ours_over_{b}"] = ratio(row[OURS], row[b])
        rows.append(row)
    return {"cells": rows, "summary": summary(rows)}


def summary(rows: list[dict]) -> dict:
    out: dict = {"cells": len(rows)}
    for b in BASELINES:
        worst = max(rows, key=lambda r: r[f"ours_over_{b}"])
        out[f"worst_over_{b}"] = {
            "ratio": worst[f"ours_over_{b}"],
            "deadline_hours": worst["deadline_hours"],
            "restart_hours": worst["restart_hours"],
        }
        out[f"mean_over_{b}"] = round(sum(r[f"ours_over_{b}"] for r in rows) / len(rows), 4)
        out[f"cells_where_ours_costs_more_than_{b}"] = [
            [r["deadline_hours"], r["restart_hours"]] for r in rows if r[OURS] > r[b]
        ]
    for n in POLICIES:
        out[f"{n}_misses"] = sum(r[f"{n}_misses"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=TRACES)
    parser.add_argument("--starts", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    t0 = time.perf_counter()
    traces = [load_trace(p) for p in sorted(args.traces.glob("*.json"))]
    if not traces:
        raise SystemExit(f"--traces: no *.json trace files in {args.traces}")
    report = {
        "policy": OURS,
        "baselines": list(BASELINES),
        "traces": [t.name for t in traces],
        "work_hours": WORK_H,
        "starts": args.starts,
        **sweep(traces, args.starts, args.workers),
    }
    report["runtime_s"] = round(time.perf_counter() - t0, 1)
    report["workers"] = args.workers
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
