"""Checkpoint cadence: simulated wall time at Daly's interval against the best interval.

Prints one JSON object. Not a timed test: figures for docs/policies.md.

    .venv/bin/python bench/cadence.py [--runs 1000] [--seed 7]

A job of ``W`` seconds of work saves every ``tau`` seconds of work (each save stalls it
``delta`` s); reclaims arrive as a Poisson process (mean ``M`` s of wall time); a reclaim loses
the work since the last save and costs ``restart`` s. For each setting the Monte Carlo wall time
(common random numbers across intervals) at Daly's interval is compared with the best of a grid
of intervals around it (0.25x .. 4x), and with Young's interval and Daly's closed form.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from spot_workflows.core.cadence import daly_interval, expected_wall_time, young_interval

SETTINGS = [  # (work h, save s, MTBF h, restart s)
    (48.0, 30.0, 2.0, 300.0),
    (48.0, 120.0, 2.0, 300.0),
    (48.0, 60.0, 0.5, 120.0),
    (24.0, 300.0, 6.0, 600.0),
]
FACTORS = [0.25, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 2.0, 2.8, 4.0]


def wall_time(work: float, tau: float, save: float, restart: float, gaps: list[float]) -> float:
    """One run: wall seconds to finish ``work`` given the reclaim inter-arrival times ``gaps``."""
    t, done, i = 0.0, 0.0, 0
    next_fail = gaps[0]
    while done < work:
        seg = min(tau, work - done)
        cost = seg + (save if done + seg < work else 0.0)
        if t + cost <= next_fail:
            t += cost
            done += seg
            continue
        t = next_fail + restart
        i += 1
        next_fail = t + gaps[i % len(gaps)]
    return t


def setting(work_h, save, mtbf_h, restart, runs, rng) -> dict:
    work, mtbf = work_h * 3600, mtbf_h * 3600
    streams = [[rng.expovariate(1 / mtbf) for _ in range(400)] for _ in range(runs)]
    daly = daly_interval(save, mtbf)
    young = young_interval(save, mtbf)

    def mean_wall(tau: float) -> float:
        return sum(wall_time(work, tau, save, restart, g) for g in streams) / runs

    grid = {f: mean_wall(daly * f) for f in FACTORS}
    best_f = min(grid, key=grid.__getitem__)
    analytic = {f: expected_wall_time(work, daly * f, save, mtbf, restart) for f in FACTORS}
    return {
        "work_hours": work_h,
        "save_s": save,
        "mtbf_hours": mtbf_h,
        "restart_s": restart,
        "daly_interval_s": round(daly, 1),
        "young_interval_s": round(young, 1),
        "sim_wall_hours_at_daly": round(grid[1.0] / 3600, 3),
        "sim_wall_hours_best": round(grid[best_f] / 3600, 3),
        "best_interval_over_daly": best_f,
        "sim_daly_over_best": round(grid[1.0] / grid[best_f], 4),
        "sim_young_over_best": round(mean_wall(young) / grid[best_f], 4),
        "closed_form_daly_over_best": round(analytic[1.0] / min(analytic.values()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    t0 = time.perf_counter()
    rng = random.Random(args.seed)
    rows = [setting(*s, args.runs, rng) for s in SETTINGS]
    print(
        json.dumps(
            {
                "runs_per_interval": args.runs,
                "settings": rows,
                "worst_sim_daly_over_best": max(r["sim_daly_over_best"] for r in rows),
                "runtime_s": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
