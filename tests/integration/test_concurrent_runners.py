"""Several runners of one step at once (what orchestrators do: a zombie and its retry, a cleared
task whose old trigger still runs, a crashed flow run retried while its job runs): exactly one job
per attempt number reaches the backend, and every job that was submitted is in the ledger.

Real local spot cloud, real processes and threads, a real compare-and-swap ledger on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

pytestmark = pytest.mark.timeout(240)

RUNNER = """
import json, sys
from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.runner import StepRunner

doc = json.loads(sys.argv[1])
spec = StepSpec.model_validate(doc["spec"])
backend = LocalBackend(state_dir=doc["state_dir"], market=ScheduledMarket(reclaims=[4.0]),
                       notice_window_s=0.5, grace_s=2.0)
runner = StepRunner(spec=spec, backend=backend, policy=SpotPolicy(preemption_budget=1),
                    poll_interval=0.1)
sys.stdin.readline()  # start together
result = runner.run()
print(json.dumps({"ok": result.succeeded, "writes": runner.ledger.writes,
                  "conflicts": runner.ledger.conflicts}))
"""


def step(tmp_path: Path) -> StepSpec:
    return StepSpec(
        key="shared-step",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.toy_train",
            "--steps=200",
            "--every=10",
            "--step-seconds=0.03",
        ],
        checkpoint_uri=(tmp_path / "ckpt").as_uri(),
    )


def check_one_job_per_attempt(tmp_path: Path, state_dir: Path) -> list[dict]:
    jobs = LocalBackend(state_dir=state_dir).jobs()
    per_attempt = Counter(j["attempt"] for j in jobs)
    assert all(n == 1 for n in per_attempt.values()), per_attempt
    ledger = Ledger.open(CheckpointStore((tmp_path / "ckpt").as_uri()), "shared-step")
    recorded = {a.job_id for a in ledger.attempts}
    assert {j["job_id"] for j in jobs} <= recorded, (jobs, ledger.attempts)
    assert [a.number for a in ledger.attempts] == sorted(per_attempt)
    outcomes = [a.outcome for a in ledger.attempts]
    assert outcomes == [Outcome.PREEMPTED, Outcome.SUCCEEDED], ledger.attempts
    assert [a.capacity for a in ledger.attempts] == [Capacity.SPOT, Capacity.ON_DEMAND]
    assert (ledger.attempts[1].resumed_from_step or 0) > 0, (
        ledger.attempts,
        [Path(j["log"]).read_text()[-800:] for j in jobs],
    )
    return jobs


@pytest.mark.parametrize("n", [2, 8])
def test_runner_processes_started_at_once_submit_one_job_per_attempt(tmp_path, n):
    state_dir = tmp_path / "cloud"
    doc = json.dumps({"spec": step(tmp_path).model_dump(mode="json"), "state_dir": str(state_dir)})
    LocalBackend(state_dir=state_dir).start()  # the daemon up first: the race is the runners'
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUNNER, doc],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=200)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["ok"] for r in results)
    check_one_job_per_attempt(tmp_path, state_dir)


@pytest.mark.parametrize("n", [2, 8])
def test_runner_threads_started_at_once_submit_one_job_per_attempt(tmp_path, n):
    state_dir = tmp_path / "cloud"
    spec = step(tmp_path)
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        backend = LocalBackend(
            state_dir=state_dir,
            market=ScheduledMarket(reclaims=[4.0]),
            notice_window_s=0.5,
            grace_s=2.0,
        )
        runner = StepRunner(
            spec=spec, backend=backend, policy=SpotPolicy(preemption_budget=1), poll_interval=0.1
        )
        barrier.wait(timeout=60)
        try:
            results[i] = runner.run()
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert all(getattr(r, "succeeded", False) for r in results), results
    check_one_job_per_attempt(tmp_path, state_dir)
