"""Escalation policies on spot traces: cost fraction and deadline misses, ours against baselines.

Prints one JSON object. Not a timed test: figures for docs/policies.md and the issue notes.

    .venv/bin/python bench/escalation.py [--starts 60] [--workers 2] [--heldout] [--synthetic]

The grid of issue #7: the 8 traces of ``shared/traces/aws-10-26-2022``, W = 48 h,
D in {52, 70} h, d in {0.05, 0.2} h, S = 60 scenarios per trace, for ``uniform_progress`` (UP),
``greedy`` and ``deadline`` (ours, the default with a deadline), plus the zero-overhead
omniscient lower bound. Every scenario runs ``core.planner.decide`` tick by tick.
``--heldout`` adds the same grid on the 4 traces of ``shared/traces/preemption`` (32 s ticks,
``--heldout-starts`` scenarios each), traces the policy was not designed on. ``--synthetic``
adds seeded synthetic traces (Markov, heavy-tailed Lomax, diurnal, always/never available; 600 s
ticks, 27 days), each its own grid, ours against UP only.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from spot_workflows.sim.grid import OMNISCIENT, Cell, ratio, run_trace, summarise
from spot_workflows.sim.traces import Trace, load_trace, trace_from_data

ROOT = Path(__file__).resolve().parents[1]
TRACES = max(ROOT.parent / "shared/traces", ROOT / "spot_workflows/data/traces", key=Path.is_dir)
POLICIES = ("uniform_progress", "greedy", "deadline")
OURS, BASELINE = "deadline", "uniform_progress"
CELLS = [(52.0, 0.05), (52.0, 0.2), (70.0, 0.05), (70.0, 0.2)]


def _job(job: tuple[Trace, Cell, str]) -> dict:
    return run_trace(*job)


def grid(traces: list[Trace], starts: int, workers: int) -> dict:
    cells = [Cell(48.0, d_h, r_h, starts) for d_h, r_h in CELLS]
    names = (*POLICIES, OMNISCIENT)
    jobs = [(t, c, n) for c in cells for n in names for t in traces]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_job, jobs, chunksize=2))
    else:
        results = [_job(j) for j in jobs]
    out, it = [], iter(results)
    for c in cells:
        row: dict = {"deadline_hours": c.deadline_hours, "restart_hours": c.restart_hours}
        for n in names:
            s = summarise(n, c, [next(it) for _ in traces])
            row[n] = {
                "mean_cost_fraction": s["mean_cost_fraction"],
                "deadline_misses": s["deadline_misses"],
                "scenarios": s["scenarios"],
            }
        row["ours_over_up"] = ratio(
            row[OURS]["mean_cost_fraction"], row[BASELINE]["mean_cost_fraction"]
        )
        out.append(row)
    mean = {n: round(sum(r[n]["mean_cost_fraction"] for r in out) / len(out), 4) for n in names}
    return {
        "traces": [t.name for t in traces],
        "work_hours": 48.0,
        "starts": starts,
        "cells": out,
        "mean_over_cells": mean,
        "ours_over_up_mean": ratio(mean[OURS], mean[BASELINE]),
        "ours_deadline_misses": sum(r[OURS]["deadline_misses"] for r in out),
        "cells_where_ours_costs_more_than_up": sum(
            r[OURS]["mean_cost_fraction"] > r[BASELINE]["mean_cost_fraction"] for r in out
        ),
    }


SYNTHETIC_TICKS = 27 * 24 * 6  # 27 days of 600 s ticks, as long as the grid's traces


def _runs(rng: random.Random, up: Callable[[], float], down: Callable[[], float]) -> list[int]:
    """Alternate up and down periods (hours drawn by ``up`` / ``down``) into 600 s ticks."""
    data: list[int] = []
    state = rng.random() < 0.5
    while len(data) < SYNTHETIC_TICKS:
        hours = up() if state else down()
        data += [int(state)] * max(1, round(hours * 6))
        state = not state
    return data[:SYNTHETIC_TICKS]


def synthetic_traces(seed: int = 7) -> list[Trace]:
    rng = random.Random(seed)

    def expo(mean_h: float):
        return lambda: rng.expovariate(1 / mean_h)

    def lomax(alpha: float, scale_h: float):
        return lambda: scale_h * (rng.paretovariate(alpha) - 1)

    specs = {
        "markov-up2h-down1h": (expo(2), expo(1)),
        "markov-up6h-down3h": (expo(6), expo(3)),
        "markov-flappy-0.5h": (expo(0.5), expo(0.5)),
        "lomax-1.5-1h": (lomax(1.5, 1), lomax(1.5, 1)),
        "lomax-1.2-scarce": (lomax(1.2, 0.3), lomax(1.2, 3)),
        "diurnal-12h": (lambda: 12.0, lambda: 12.0),
    }
    traces = [trace_from_data(n, 600, _runs(rng, u, d)) for n, (u, d) in specs.items()]
    traces.append(trace_from_data("always", 600, [1] * SYNTHETIC_TICKS))
    traces.append(trace_from_data("never", 600, [0] * SYNTHETIC_TICKS))
    return traces


def synthetic(starts: int, workers: int) -> list[dict]:
    """Ours / UP per cell on each synthetic trace (its own grid)."""
    traces = synthetic_traces()
    cells = [Cell(48.0, d_h, r_h, starts) for d_h, r_h in CELLS]
    jobs = [(t, c, n) for t in traces for c in cells for n in (BASELINE, OURS)]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_job, jobs, chunksize=2))
    else:
        results = [_job(j) for j in jobs]
    rows, it = [], iter(results)
    for t in traces:
        ratios, misses = [], 0
        for _ in cells:
            up, ours = next(it), next(it)
            ratios.append(ratio(ours["mean_cost_fraction"], up["mean_cost_fraction"]))
            misses += ours["deadline_misses"]
        rows.append(
            {
                "trace": t.name,
                "spot_fraction": round(sum(t.available) / t.ticks, 2),
                "ours_over_up": ratios,
                "mean": round(sum(ratios) / len(ratios), 4),
                "ours_deadline_misses": misses,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=TRACES / "aws-10-26-2022")
    parser.add_argument("--starts", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--heldout", action="store_true")
    parser.add_argument("--heldout-starts", type=int, default=20)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--synthetic-starts", type=int, default=30)
    args = parser.parse_args()
    t0 = time.perf_counter()
    traces = [load_trace(p) for p in sorted(args.traces.glob("*.json"))]
    report = {"policy": OURS, "baseline": BASELINE, "grid": grid(traces, args.starts, args.workers)}
    report["runtime_s"] = round(time.perf_counter() - t0, 1)
    if args.heldout:
        t1 = time.perf_counter()
        held = [load_trace(p) for p in sorted((TRACES / "preemption").rglob("*.json"))]
        report["heldout"] = grid(held, args.heldout_starts, args.workers)
        report["heldout_runtime_s"] = round(time.perf_counter() - t1, 1)
    if args.synthetic:
        t2 = time.perf_counter()
        report["synthetic"] = synthetic(args.synthetic_starts, args.workers)
        report["synthetic_runtime_s"] = round(time.perf_counter() - t2, 1)
    report["workers"] = args.workers
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
