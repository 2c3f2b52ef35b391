"""Issue #11, item 2: the orchestrating process (the runner the CLI, the Prefect task and each
Airflow task round run) SIGKILLed at random points; running it again re-attaches: never a
duplicate job, never an attempt missing from (or left open in) the ledger.

``runner_lab.py`` kills real runner processes halfway through each of their first ledger writes
(``SPOT_WORKFLOWS_FAULT=ledger:N``: before/after the write-ahead record, the job id, the
observations, a cancel, the outcome) and at seeded random times, on the local backend (real
subprocess jobs, the simulated market: reclaims, no capacity, app errors) and on AWS Batch (a moto
server, ledger on moto S3), then compares what the backend holds with the ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LAB = HERE / "runner_lab.py"
EXPECTED = {"succeeds": "SUCCEED", "reclaimed": "SUCCEED", "no-capacity": "SUCCEED"}
EXPECTED["app-error"] = "FAIL"

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only (pidfd)")


def run_lab(cfg: dict, tmp: Path, env: dict | None = None) -> list[dict]:
    path = tmp / "lab.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, str(LAB), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["records"]


def check_step(r: dict) -> None:
    """What the backend holds agrees with the ledger, whatever lives were killed."""
    attempts, jobs = r["attempts"], r["jobs"]
    assert r["final"] == EXPECTED[r["scenario"]], r
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    # every attempt closed with an outcome (none left live or half-recorded) ...
    assert all(a["state"] == "DONE" and a["outcome"] for a in attempts), r
    # ... and never mistaken for a cancel from outside (our own cancels keep their meaning)
    assert not any(a["outcome"] == "CANCELLED" for a in attempts), r
    # one job per attempt and one attempt per job: no duplicate submission, no lost attempt
    assert sorted(j["job_id"] for j in jobs) == sorted(a["job_id"] for a in attempts), r
    names = {j["job_id"]: j["job_name"] for j in jobs}
    assert all(names[a["job_id"]] == a["job_name"] for a in attempts), r


@pytest.fixture(scope="module")
def local_records(tmp_path_factory, long_mode) -> list[dict]:
    tmp = tmp_path_factory.mktemp("runner-lab")
    cfg = {
        "kind": "local",
        "root": str(tmp / "steps"),
        "ledger_points": 8 if long_mode else 5,
        "timer_steps": 6 if long_mode else 1,
        "seed": 11,
        "lanes": 4,
    }
    return run_lab(cfg, tmp)


def test_local_runner_killed_anywhere_reattaches_without_duplicates(local_records):
    for r in local_records:
        check_step(r)
        jobs = r["jobs"]
        launched = [j for j in jobs if j["launched"]]
        # the command ran once per launched job (a no-capacity attempt never launched)
        assert sorted(int(n) for n in r["command_runs"]) == sorted(
            a["number"] for a in r["attempts"] if a["job_id"] in {j["job_id"] for j in launched}
        ), r
        # never two workers of the step at once
        spans = sorted((j["started_at"], j["ended_at"]) for j in launched)
        assert all(
            a[1] is not None and a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)
        ), r


def test_local_campaign_killed_runners_at_every_ledger_write_and_at_random(local_records):
    killed = [r for r in local_records if r["killed_lives"]]
    assert len(killed) >= 0.8 * len(local_records)
    points = {f for r in killed for lf in r["lives"] if lf["exit"] == -9 for f in [lf["fault"]]}
    assert {f"ledger:{n}" for n in range(1, 6)} <= points
    assert sum(1 for r in killed for lf in r["lives"] if lf["kill_after"] is not None) >= 4
    # the cancel after a spot capacity timeout was cut at each of its writes and still escalated
    no_cap = [r for r in local_records if r["scenario"] == "no-capacity"]
    for r in no_cap:
        spot, od = r["attempts"]
        assert (spot["outcome"], spot["stopping"], od["capacity"]) == (
            "NO_CAPACITY",
            "NO_CAPACITY",
            "ON_DEMAND",
        )


# -- AWS Batch on a moto server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_infra(tmp_path_factory):
    from runner_lab import moto_infra

    with moto_infra(tmp_path_factory.mktemp("aws-lab")) as found:
        yield found


def test_aws_runner_killed_at_random_reattaches_without_duplicate_jobs(moto_infra, long_mode):
    cfg, creds = moto_infra
    cfg = {**cfg, "timer_steps": 24 if long_mode else 6, "timer_max_s": 0.6, "lanes": 2}
    records = run_lab(cfg, Path(cfg["out"]), env=creds)
    for r in records:
        check_step(r)
        assert len(r["attempts"]) == 1  # moto's simple Batch: the one job succeeds
    assert sum(r["killed_lives"] for r in records) >= len(records) // 2


def test_a_local_cloud_killed_between_marking_a_job_launched_and_spawning_it_strands_nothing(
    tmp_path,
):
    # Found by the campaign: the local market marks a job launched, then spawns its supervisor;
    # killed in between, it left a job that never ran and stayed PENDING for good. The local
    # cloud is a daemon now: kill it -9 at that point, and the next one must run the job once.
    import os
    import signal
    import time

    from spot_workflows.backends.local import LocalBackend
    from spot_workflows.backends.local.cloud import RELAUNCH_AFTER_S
    from spot_workflows.backends.local.jobs import alive, read_json, write_json_atomic
    from spot_workflows.backends.local.market import ScheduledMarket
    from spot_workflows.config import StepSpec
    from spot_workflows.runner import StepRunner

    marker = tmp_path / "ran"
    spec = StepSpec(
        key="orphan",
        command=["sh", "-c", f"echo x >> {marker}"],
        checkpoint_uri=f"file://{tmp_path / 'ckpt'}",
    )
    state = tmp_path / "b"
    waiting = LocalBackend(state_dir=state, market=ScheduledMarket(unavailable=[(0, 3600)]))
    StepRunner(spec=spec, backend=waiting, poll_interval=0.05).tick()  # recorded, submitted
    (job_dir,) = (state / "jobs").iterdir()
    daemon = read_json(state / "daemon.json")["pid"]
    os.kill(daemon, signal.SIGKILL)
    deadline = time.time() + 10
    while alive(daemon) and time.time() < deadline:
        time.sleep(0.02)
    job = read_json(job_dir / "job.json")
    job["launched_at"] = time.time() - RELAUNCH_AFTER_S - 1  # marked launched, never spawned
    write_json_atomic(job_dir / "job.json", job)
    result = StepRunner(spec=spec, backend=LocalBackend(state_dir=state), poll_interval=0.05).run()
    assert [a.outcome.value for a in result.attempts] == ["SUCCEEDED"]
    assert len(list((state / "jobs").iterdir())) == 1 and marker.read_text() == "x\n"
