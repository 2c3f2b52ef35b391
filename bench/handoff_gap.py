"""The handoff gap on the local backend: on-demand worker exit -> spot worker resumed.

Prints one JSON object. Not a timed test: figures for the docs and the issue notes.

    .venv/bin/python bench/handoff_gap.py [--runs 5] [--steps 400]

Each run, with real subprocesses (the local spot cloud, ``spot-run``, the toy trainer):

1. an ON_DEMAND attempt of a step runs in placement ``od`` and checkpoints;
2. a SPOT attempt (the probe) is submitted to placement ``b`` (its own market, spot available)
   and recorded live beside it; its ``spot-run`` starts and waits: it does not own the step;
3. the handoff, as the runner does it: the marker ``handoff/1`` is written and the on-demand
   attempt marked ``stopping=STOPPED, handoff=True`` in the ledger; its worker sees the marker,
   saves and exits 75; once the job is seen done it is finished in the ledger;
4. the spot worker sees the on-demand attempt done and resumes from its final checkpoint.

* ``gap_s``: on-demand worker exit (its supervisor's recorded end) -> ``RESUME`` in the spot
  worker's log (median / max over ``--runs``); the part of it after the ledger says DONE is
  ``ledger_to_resume_s`` (spot-run's ownership poll, 1 s, plus starting the trainer).
* ``marker_to_exit_s``: marker written -> on-demand worker exited (notice poll + emergency save).
* every run checks that the spot worker resumed from the handoff checkpoint and that the final
  weights equal an uninterrupted run's (``bit_identical``).
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
from spot_workflows.backends.local.jobs import read_json
from spot_workflows.backends.local.market import NeverReclaimed
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome
from spot_workflows.core.placements import Placement
from spot_workflows.demo import last_step_in_log
from spot_workflows.examples.toy_train import reference
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.handoff import clear_marker, write_marker

TRAIN = [sys.executable, "-m", "spot_workflows.examples.toy_train"]


def wait_for(predicate, timeout: float = 120.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s")


def add_live(ledger: Ledger, capacity: Capacity, placement: str) -> Attempt:
    """Record a live SPOT attempt beside the live one (a racer or a probe), as the runner does."""
    return ledger.begin(
        capacity=capacity,
        backend="local",
        now=time.time(),
        placement=placement,
        beside_live=True,
    )


def one_run(workdir: Path, backend: LocalBackend, *, steps: int, run: int) -> dict:
    uri = (workdir / f"ckpt-{run}").as_uri()
    key = f"handoff-{run}"
    spec = StepSpec(
        key=key,
        command=[*TRAIN, f"--steps={steps}", "--every=50", "--step-seconds=0.01"],
        checkpoint_uri=uri,
    )
    store = CheckpointStore(uri)
    ledger = Ledger.open(store, key)
    od = ledger.begin(capacity=Capacity.ON_DEMAND, backend="local", now=time.time(), placement="od")
    od_job = backend.submit(
        spec, job_name=od.job_name, attempt=od.number, capacity=Capacity.ON_DEMAND, placement="od"
    )
    ledger.set_job_id(od, od_job)
    wait_for(lambda: (last_step_in_log(backend.log_path(od_job)) or 0) >= steps // 4)

    probe = add_live(ledger, Capacity.SPOT, "b")
    spot_job = backend.submit(
        spec, job_name=probe.job_name, attempt=probe.number, capacity=Capacity.SPOT, placement="b"
    )
    ledger.set_job_id(probe, spot_job)
    wait_for(lambda: backend.describe([spot_job])[spot_job].state is AttemptState.RUNNING)

    asked = time.time()
    write_marker(store, od.number, reason="spot is back in placement b")
    ledger.update(od, stopping=Outcome.STOPPED, handoff=True)
    obs = wait_for(
        lambda: (o := backend.describe([od_job])[od_job]).state is AttemptState.DONE and o
    )
    ledger.observe(od, obs)
    ledger.finish(od, Outcome.STOPPED, now=time.time(), reason="handed off to attempt 2")
    finished = time.time()
    exited = float(
        (read_json(backend.state_dir / "jobs" / od_job / "status.json") or {})["ended_at"]
    )

    spot_log = backend.log_path(spot_job)
    wait_for(lambda: "RESUME" in spot_log.read_text())
    resumed = time.time()
    od_log = backend.log_path(od_job).read_text()
    saved = [int(x.split()[1]) for x in od_log.splitlines() if x.startswith("EMERGENCY")]
    done = wait_for(
        lambda: (o := backend.describe([spot_job])[spot_job]).state is AttemptState.DONE and o
    )
    clear_marker(store, od.number)
    text = spot_log.read_text()
    result = json.loads(text.strip().splitlines()[-1]) if done.exit_code == 0 else {}
    return {
        "od_exit_code": obs.exit_code,
        "saved_step": saved[0] if saved else None,
        "resumed_step": next(
            (int(x.split()[1]) for x in text.splitlines() if x.startswith("RESUME")), None
        ),
        "marker_to_exit_s": round(exited - asked, 3),
        "gap_s": round(resumed - exited, 3),
        "ledger_to_resume_s": round(resumed - finished, 3),
        "bit_identical": result.get("checksum") == reference(steps, 7),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="handoff-gap-") as tmp:
        workdir = Path(tmp)
        backend = LocalBackend(
            state_dir=workdir / "cloud",
            placements=[
                Placement(name="a"),
                Placement(name="b"),
                Placement(name="od", capacity=Capacity.ON_DEMAND),
            ],
            markets={
                "a": {"kind": "scheduled", "unavailable": [[0, 86400]]},
                "b": NeverReclaimed(),
            },
        ).start()
        try:
            runs = [one_run(workdir, backend, steps=args.steps, run=i) for i in range(args.runs)]
        finally:
            backend.shutdown()
    gaps = [r["gap_s"] for r in runs]
    exits = [r["marker_to_exit_s"] for r in runs]
    print(
        json.dumps(
            {
                "runs": len(runs),
                "gap_s": {"median": statistics.median(gaps), "max": max(gaps)},
                "marker_to_exit_s": {"median": statistics.median(exits), "max": max(exits)},
                "resumed_from_handoff_checkpoint": all(
                    r["saved_step"] is not None and r["saved_step"] == r["resumed_step"]
                    for r in runs
                ),
                "all_exit_75": all(r["od_exit_code"] == 75 for r in runs),
                "bit_identical": all(r["bit_identical"] for r in runs),
                "per_run": runs,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
