"""Fault-injection figures (issue #11, items 1 and 2). Prints one JSON object.

Not a timed test: the same campaigns the reliability suite runs (``tests/reliability``), with
their figures for docs/reliability.md.

    .venv/bin/python bench/fault_injection.py [--runs 200] [--jobs 2] [--seed 20261123]

* ``workers``: seeded runs of the toy trainer whose worker processes are SIGKILLed at named save
  points (mid data write, staged, mid manifest, mid latest.json, before tidy) or at random times,
  with and without termination notices: kills by mode, steps lost per kill, and whether every
  run's output and final checkpoint are bit-identical to the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

import worker_lab  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="seeded worker-kill runs")
    ap.add_argument("--jobs", type=int, default=2, help="parallel lanes")
    ap.add_argument("--seed", type=int, default=20261123)
    args = ap.parse_args(argv)
    root = worker_lab.default_root()
    t0 = time.perf_counter()
    try:
        workers = worker_lab.campaign(runs=args.runs, jobs=args.jobs, seed=args.seed, root=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {
        "workers": {**workers["summary"], "seed": args.seed},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
