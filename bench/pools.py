"""Spot pools benchmark: our pool policy against ``rr_up`` and ``up_or`` (issue #18 targets).

Grid: the aligned us-west-2a / us-west-2b pairs of aws-10-26-2022 for v100_1, k80_1, v100_8 and
k80_8; W = 48 h, D in {52, 70} h, d in {0.05, 0.2} h, 60 scenarios per cell, race cost 300 s.
Prints one JSON line per cell, then a JSON summary: mean ratio of our cost to each baseline's,
the worst cell against ``up_or``, total misses, the zero-overhead omniscient lower bound (spot
wherever either zone has it, future known) for scale, and whether the targets hold (0 misses; mean
ratio <= 0.85 against rr_up and <= 0.95 against up_or; no cell above up_or), and the
clairvoyant optimum (future known, every restart paid: the cheapest any policy could do on the
scenario) against rr_up, which says how much of rr_up's cost any online policy could still save.

    .venv/bin/python bench/pools.py [--starts 60] [--workers 2] [--race-cost-s 300]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ProcessPoolExecutor

from spot_workflows.sim import load_trace
from spot_workflows.sim.clairvoyant import clairvoyant_cost
from spot_workflows.sim.grid import Cell, omniscient_cost
from spot_workflows.sim.pool_baselines import RR_UP, UP_OR, run_pool
from spot_workflows.sim.traces import Trace, trace_from_data

GPUS = ("v100_1", "k80_1", "v100_8", "k80_8")
DEADLINES = (52.0, 70.0)
OVERHEADS = (0.05, 0.2)
WORK = 48.0


def _either(traces: list[Trace]) -> Trace:
    """Spot available wherever any placement has it (the pair's OR, over the common length)."""
    n = min(len(t.available) for t in traces)
    data = [int(any(t.available[k] for t in traces)) for k in range(n)]
    return trace_from_data("+".join(t.name for t in traces), traces[0].gap_s, data)


def omniscient_fraction(traces: list[Trace], cell: Cell) -> float:
    """Lower bound no policy can beat: zero restart overhead, future availability known, spot
    wherever any placement has it; as a fraction of all-on-demand."""
    either = _either(traces)
    starts = either.starts(cell.deadline_hours, cell.starts)
    dollars = sum(omniscient_cost(either, s, cell) for s in starts) / len(starts)
    return dollars / (cell.work_hours * cell.on_demand_usd_per_hour)


def clairvoyant_fraction(traces: list[Trace], cell: Cell) -> float:
    """The clairvoyant optimum with restarts (a lower bound for every policy, scenario by
    scenario), as a fraction of all-on-demand."""
    policy = cell.policy("auto")
    starts = traces[0].starts(cell.deadline_hours, cell.starts)
    dollars = sum(
        clairvoyant_cost(
            traces,
            s,
            policy,
            work_s=cell.work_hours * 3600,
            restart_overhead_s=cell.restart_hours * 3600,
        )
        for s in starts
    )
    return dollars / len(starts) / (cell.work_hours * cell.on_demand_usd_per_hour)


def _cell(job: tuple[str, float, float, int, float]) -> dict:
    gpu, deadline, overhead, starts, race_cost_s = job
    traces = [load_trace(f"aws-10-26-2022/us-west-2{zone}_{gpu}") for zone in "ab"]
    cell = Cell(WORK, deadline, overhead, starts)
    out = run_pool(traces, cell, race_cost_s=race_cost_s)
    ours = out["mean_cost_fraction"]
    bound = omniscient_fraction(traces, cell)
    best = clairvoyant_fraction(traces, cell)
    return {
        "gpu": gpu,
        "deadline_hours": deadline,
        "restart_hours": overhead,
        "ours": ours,
        RR_UP: out[RR_UP]["mean_cost_fraction"],
        UP_OR: out[UP_OR]["mean_cost_fraction"],
        "misses": {
            "ours": out["deadline_misses"],
            RR_UP: out[RR_UP]["deadline_misses"],
            UP_OR: out[UP_OR]["deadline_misses"],
        },
        "vs_rr_up": round(ours / out[RR_UP]["mean_cost_fraction"], 4),
        "vs_up_or": round(ours / out[UP_OR]["mean_cost_fraction"], 4),
        "omniscient": round(bound, 4),
        "omniscient_vs_rr_up": round(bound / out[RR_UP]["mean_cost_fraction"], 4),
        "clairvoyant": round(best, 4),
        "clairvoyant_vs_rr_up": round(best / out[RR_UP]["mean_cost_fraction"], 4),
        "ours_vs_clairvoyant": round(ours / best, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--race-cost-s", type=float, default=300.0)
    args = parser.parse_args()
    jobs = [
        (gpu, deadline, overhead, args.starts, args.race_cost_s)
        for gpu, deadline, overhead in itertools.product(GPUS, DEADLINES, OVERHEADS)
    ]
    began = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        cells = list(pool.map(_cell, jobs))
    for c in cells:
        print(json.dumps(c))
    vs_rr = sum(c["vs_rr_up"] for c in cells) / len(cells)
    vs_or = sum(c["vs_up_or"] for c in cells) / len(cells)
    worst = max(cells, key=lambda c: c["vs_up_or"])
    bound_vs_rr = sum(c["omniscient_vs_rr_up"] for c in cells) / len(cells)
    misses = sum(c["misses"]["ours"] for c in cells)
    best_vs_rr = sum(c["clairvoyant_vs_rr_up"] for c in cells) / len(cells)
    ours_vs_best = sum(c["ours_vs_clairvoyant"] for c in cells) / len(cells)
    summary = {
        "cells": len(cells),
        "deadline_misses": misses,
        "mean_ratio_vs_rr_up": round(vs_rr, 4),
        "mean_ratio_vs_up_or": round(vs_or, 4),
        # zero-overhead omniscient lower bound, for scale: no online policy gets below it
        "omniscient_mean_ratio_vs_rr_up": round(bound_vs_rr, 4),
        # the clairvoyant optimum with restarts: what no policy can beat, scenario by scenario
        "clairvoyant_mean_ratio_vs_rr_up": round(best_vs_rr, 4),
        "clairvoyant_cells_above_0.85_rr_up": sum(
            1 for c in cells if c["clairvoyant_vs_rr_up"] > 0.85
        ),
        "mean_ratio_vs_clairvoyant": round(ours_vs_best, 4),
        "worst_cell_vs_up_or": {
            k: worst[k] for k in ("gpu", "deadline_hours", "restart_hours", "vs_up_or")
        },
        "targets_met": {
            "no_misses": misses == 0,
            "vs_rr_up_le_0.85": vs_rr <= 0.85,
            "vs_up_or_le_0.95": vs_or <= 0.95,
            "no_cell_above_up_or": worst["vs_up_or"] <= 1.0,
        },
        "seconds": round(time.monotonic() - began, 1),
    }
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
