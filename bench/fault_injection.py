"""Fault-injection figures (issue #11, items 1 and 2). Prints one JSON object.

Not a timed test: the same campaigns the reliability suite runs (``tests/reliability``), with
their figures for docs/reliability.md.

    .venv/bin/python bench/fault_injection.py [--runs 200] [--jobs 2] [--seed 20261123]

* ``workers``: seeded runs of the toy trainer whose worker processes are SIGKILLed at named save
  points (mid data write, staged, mid manifest, mid latest.json, before tidy) or at random times,
  with and without termination notices: kills by mode, steps lost per kill, and whether every
  run's output and final checkpoint are bit-identical to the uninterrupted run's.
* ``orchestrator_local`` / ``orchestrator_aws``: runner processes SIGKILLed halfway through each
  of their first ledger writes and at seeded random times (local backend: success, reclaim, no
  capacity, app error; AWS Batch on a moto server with the ledger on S3), re-run until a final
  decision: runner kills, jobs against ledger attempts, duplicates, attempts lost or left open.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LABS = Path(__file__).resolve().parents[1] / "tests" / "reliability"
sys.path.insert(0, str(LABS))

import runner_lab  # noqa: E402
import worker_lab  # noqa: E402


def orchestrator(cfg: dict, tmp: Path, env: dict | None = None) -> dict:
    """Run the runner-kill lab in its own process (it forks runner lives) and summarize."""
    path = tmp / f"{cfg['kind']}.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, str(LABS / "runner_lab.py"), str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return runner_lab.summarize(json.loads(proc.stdout)["records"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="seeded worker-kill runs")
    ap.add_argument("--jobs", type=int, default=2, help="parallel lanes")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--ledger-points", type=int, default=5, help="ledger writes to kill at")
    ap.add_argument("--timer-steps", type=int, default=2, help="random-kill steps per scenario")
    ap.add_argument("--aws-steps", type=int, default=10, help="random-kill steps on moto")
    args = ap.parse_args(argv)
    root = worker_lab.default_root()
    t0 = time.perf_counter()
    try:
        workers = worker_lab.campaign(runs=args.runs, jobs=args.jobs, seed=args.seed, root=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="spot-runner-lab-") as tmp:
        local = orchestrator(
            {
                "kind": "local",
                "root": f"{tmp}/steps",
                "ledger_points": args.ledger_points,
                "timer_steps": args.timer_steps,
                "lanes": 4,
            },
            Path(tmp),
        )
        with runner_lab.moto_infra(Path(tmp)) as (cfg, creds):
            cfg.update(timer_steps=args.aws_steps, timer_max_s=0.6, lanes=2)
            aws = orchestrator(cfg, Path(tmp), creds)
    out = {
        "workers": {**workers["summary"], "seed": args.seed},
        "orchestrator_local": local,
        "orchestrator_aws": aws,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
