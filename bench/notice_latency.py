"""Notice-to-resubmit latency and steps lost per reclaim on the local backend.

Prints one JSON object. Not a timed test: figures for the docs and the issue notes.

    .venv/bin/python bench/notice_latency.py [--reclaims 50] [--poll 0.1]

* ``notice_to_resubmit_s``: from the market's notice on the metadata endpoint to the runner's
  submission of the next attempt (worker sees the notice, saves, exits 75; runner classifies,
  decides, resubmits), p50/p99 over ``--reclaims`` reclaims.
* ``steps_lost_per_reclaim``: training steps redone after a reclaim, with notice-driven emergency
  saves (2 s notice) and without (SIGKILL at the reclaim, periodic checkpoints every 25 steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Action
from spot_workflows.demo import attempts_report
from spot_workflows.runner import StepRunner


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run(
    workdir: Path, *, reclaims: int, reclaim_after: float, notice: float, steps: int, poll: float
):
    spec = StepSpec(
        key="bench",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.toy_train",
            f"--steps={steps}",
            "--every=25",
            "--step-seconds=0.005",
        ],
        checkpoint_uri=f"file://{workdir / 'ckpt'}",
    )
    policy = SpotPolicy(preemption_budget=reclaims + 1, max_attempts=reclaims + 5)
    market = ScheduledMarket(reclaims=[reclaim_after] * reclaims)
    with LocalBackend(
        state_dir=workdir / "b",
        market=market,
        notice_window_s=notice,
        grace_s=0 if notice == 0 else 5,
        notice_poll_s=0.1,
    ) as backend:
        runner = StepRunner(spec=spec, backend=backend, policy=policy, poll_interval=poll)
        while sum(a.outcome is not None for a in runner.ledger.attempts) < reclaims:
            if runner.tick().action is Action.WAIT:
                time.sleep(poll)
        live = runner.ledger.live  # the attempt after the last reclaim: stop it, we are done
        if live is not None and live.job_id is not None:
            backend.cancel(live.job_id, reason="spot-workflows: benchmark finished")
        result = runner.result(runner.tick())
        notices = [e["at"] for e in backend.market_events() if e["event"] == "notice"]
        rows = attempts_report(result, backend)
        backend.shutdown()  # this run's own local cloud: nothing outlives the benchmark
    submits = [a.submitted_at for a in result.attempts]
    latencies = [
        min(s for s in submits if s > n) - n for n in notices if any(s > n for s in submits)
    ]
    lost = [
        r["steps_lost"] for r in rows if r["outcome"] == "PREEMPTED" and r["steps_lost"] is not None
    ]
    return latencies, lost, len(result.attempts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reclaims", type=int, default=50)
    ap.add_argument("--lost-reclaims", type=int, default=8)
    ap.add_argument("--poll", type=float, default=0.1, help="runner poll interval (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lat, lost_notice, n = run(
            Path(tmp) / "lat",
            reclaims=args.reclaims,
            reclaim_after=0.8,
            notice=2.0,
            steps=100_000,
            poll=args.poll,
        )
        _, lost_kill, _ = run(
            Path(tmp) / "kill",
            reclaims=args.lost_reclaims,
            reclaim_after=1.0,
            notice=0.0,
            steps=100_000,
            poll=args.poll,
        )
        _, lost_notice2, _ = run(
            Path(tmp) / "notice",
            reclaims=args.lost_reclaims,
            reclaim_after=1.0,
            notice=2.0,
            steps=100_000,
            poll=args.poll,
        )
    print(
        json.dumps(
            {
                "bench": "notice_latency",
                "backend": "local",
                "reclaims_measured": len(lat),
                "runner_poll_s": args.poll,
                "worker_notice_poll_s": 0.1,
                "notice_to_resubmit_s": {
                    "p50": round(percentile(lat, 0.5), 3),
                    "p99": round(percentile(lat, 0.99), 3),
                    "max": round(max(lat), 3),
                    "mean": round(statistics.fmean(lat), 3),
                },
                "steps_lost_per_reclaim": {
                    "with_notice_emergency_save": {
                        "mean": statistics.fmean(lost_notice + lost_notice2),
                        "max": max(lost_notice + lost_notice2),
                        "reclaims": len(lost_notice + lost_notice2),
                    },
                    "without_notice_sigkill_every_25_steps": {
                        "mean": round(statistics.fmean(lost_kill), 2),
                        "max": max(lost_kill),
                        "reclaims": len(lost_kill),
                    },
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
