"""Orchestrator-kill campaign: the runner SIGKILLed at random points, then run again.

A step is driven by :class:`StepRunner` in a "runner life": a real process (forked from this
one) that opens the backend and runs the step. The campaign SIGKILLs lives at named points
(``ledger:N``: halfway through the N-th ledger write, :mod:`spot_workflows.runtime.store.faults`) or at
random times, and starts a new life until the step reaches a final decision, like an Airflow or
Prefect retry after a crashed worker. Then it checks what the backend really holds against the
ledger: one job per attempt and one attempt per job (no duplicate, none lost), every attempt
closed with its outcome, the command run once per launched attempt, never two jobs at once, and
the same final decision as the uninterrupted run.

Backends: ``local`` (LocalBackend on a state dir) and ``aws`` (AwsBatchBackend on a moto server,
ledger on moto S3). Run by ``tests/reliability/test_orchestrator_faults.py`` and
``bench/fault_injection.py``::

    python tests/reliability/runner_lab.py CONFIG.json   # prints the records as JSON
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lanes import run_forked_lanes

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import NeverReclaimed, ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.errors import StepFailedError
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store import faults
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

# name -> (command (MARK is the marker file), market, policy, expected final decision)
SCENARIOS = {
    "succeeds": ("echo $SPOT_ATTEMPT >> MARK; sleep 0.4", None, {}, "SUCCEED"),
    "reclaimed": (
        "echo $SPOT_ATTEMPT >> MARK; sleep 0.7",
        {"reclaims": [0.25]},
        {"preemption_budget": 1},
        "SUCCEED",
    ),
    "no-capacity": (
        "echo $SPOT_ATTEMPT >> MARK; sleep 0.2",
        {"unavailable": [[0, 3600]]},
        {"capacity_timeout_s": 0.3},
        "SUCCEED",
    ),
    "app-error": ("echo $SPOT_ATTEMPT >> MARK; exit 3", None, {"app_error_retries": 1}, "FAIL"),
}
AWS_SCENARIOS = {"succeeds": ("python train.py", None, {}, "SUCCEED")}


def _spec(cfg: dict, step: dict) -> StepSpec:
    command, *_ = (AWS_SCENARIOS if cfg["kind"] == "aws" else SCENARIOS)[step["scenario"]]
    key = step["key"]
    if cfg["kind"] == "aws":
        return StepSpec(
            key=key,
            command=command.split(),
            image="public.ecr.aws/docker/library/python:3.11",
            checkpoint_uri=f"s3://{cfg['bucket']}/{key}",
        )
    mark = Path(cfg["root"]) / key / "marker"
    return StepSpec(
        key=key,
        command=["sh", "-c", command.replace("MARK", str(mark))],
        checkpoint_uri=f"file://{cfg['root']}/{key}/ckpt",
    )


def _store(cfg: dict, spec: StepSpec) -> CheckpointStore:
    if cfg["kind"] == "aws":
        opts = {"endpoint_url": cfg["url"], "skip_instance_cache": True}
        return CheckpointStore(spec.checkpoint_uri, storage_options=opts)
    return CheckpointStore(spec.checkpoint_uri)


def _aws_backend(cfg: dict):
    from spot_workflows.backends.aws_batch import AwsBatchBackend

    return AwsBatchBackend(
        spot_queue=cfg["spot_queue"],
        on_demand_queue=cfg["on_demand_queue"],
        region=cfg["region"],
        endpoint_url=cfg["url"],
        sleep=lambda s: None,
    )


def life(cfg: dict, step: dict, fault: str | None) -> int:
    """One runner life (in the forked child): 0 succeeded, 2 the planner failed the step."""
    os.environ.pop(faults.ENV, None)
    if fault:
        os.environ[faults.ENV] = fault
    faults._seen.clear()
    _, market, policy, _ = (AWS_SCENARIOS if cfg["kind"] == "aws" else SCENARIOS)[step["scenario"]]
    spec = _spec(cfg, step)
    if cfg["kind"] == "aws":
        backend = contextlib.nullcontext(_aws_backend(cfg))
    else:
        backend = LocalBackend(
            state_dir=Path(cfg["root"]) / step["key"] / "state",
            market=ScheduledMarket(**market) if market else NeverReclaimed(),
            notice_window_s=0.1,
            grace_s=0.3,
            wrap=False,
        )
    with backend as live:
        runner = StepRunner(
            spec=spec,
            backend=live,
            policy=SpotPolicy(**policy),
            store=_store(cfg, spec),
            poll_interval=0.03,
        )
        try:
            runner.run()
            return 0
        except StepFailedError:
            return 2


def run_life(cfg: dict, step: dict, fault: str | None, kill_after: float | None) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = life(cfg, step, fault)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"runner life {step['key']}: {type(exc).__name__}: {exc}\n")
        finally:
            os._exit(code)
    fd = os.pidfd_open(pid)
    try:
        if kill_after is not None and not select.select([fd], [], [], kill_after)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(fd)


# -- what the backend really holds ---------------------------------------------------------------
def _local_jobs(cfg: dict, step: dict) -> list[dict]:
    jobs_dir = Path(cfg["root"]) / step["key"] / "state" / "jobs"
    out = []
    for d in sorted(jobs_dir.iterdir()) if jobs_dir.exists() else []:
        job = json.loads((d / "job.json").read_text())
        status = {}
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((d / "status.json").read_text())
        out.append(
            {
                "job_id": job["job_id"],
                "job_name": job["job_name"],
                "launched": "launched_at" in job,
                "started_at": status.get("started_at"),
                "ended_at": status.get("ended_at"),
            }
        )
    return out


def _aws_jobs(cfg: dict, step: dict) -> list[dict]:
    import boto3

    batch = boto3.client("batch", endpoint_url=cfg["url"], region_name=cfg["region"])
    found: dict[str, dict] = {}
    for queue in (cfg["spot_queue"], cfg["on_demand_queue"]):
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"):
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                if j["jobName"].startswith(step["key"]):
                    found[j["jobId"]] = {"job_id": j["jobId"], "job_name": j["jobName"]}
        for j in batch.list_jobs(jobQueue=queue, jobStatus="FAILED")["jobSummaryList"]:
            if j["jobName"].startswith(step["key"]):
                found[j["jobId"]] = {"job_id": j["jobId"], "job_name": j["jobName"]}
    return list(found.values())


def run_step(cfg: dict, step: dict) -> dict:
    """Drive one step through killed lives to a final decision; return its record."""
    rng = random.Random(step["seed"])
    kills = list(step.get("faults", []))  # named faults first, then timer kills
    timers = step.get("timers", 0)
    lives = []
    code = None
    for _ in range(30):
        fault = kills.pop(0) if kills else None
        kill_after = None
        if fault is None and timers > 0:
            timers -= 1
            kill_after = rng.uniform(0.0, cfg.get("timer_max_s", 1.2))
        code = run_life(cfg, step, fault, kill_after)
        lives.append({"fault": fault, "kill_after": kill_after, "exit": code})
        if code in (0, 2):
            break
    spec = _spec(cfg, step)
    ledger = Ledger.open(_store(cfg, spec), spec.key)
    attempts = [a.model_dump(mode="json") for a in ledger.attempts]
    jobs = _aws_jobs(cfg, step) if cfg["kind"] == "aws" else _local_jobs(cfg, step)
    mark = Path(cfg.get("root", "/nonexistent")) / step["key"] / "marker"
    ran = mark.read_text().split() if mark.exists() else []
    return {
        **step,
        "lives": lives,
        "killed_lives": sum(1 for lf in lives if lf["exit"] == -signal.SIGKILL),
        "final": {0: "SUCCEED", 2: "FAIL"}.get(code, f"exit {code}"),
        "attempts": attempts,
        "jobs": jobs,
        "command_runs": ran,
    }


def plan(kind: str, *, seed: int, timer_steps: int, ledger_points: int) -> list[dict]:
    """Steps: for each scenario, a kill mid each of its first ledger writes, then seeded timers."""
    scenarios = AWS_SCENARIOS if kind == "aws" else SCENARIOS
    rng = random.Random(seed)
    steps = []
    for name in scenarios:
        if kind != "aws":
            for n in range(1, ledger_points + 1):
                steps.append({"scenario": name, "faults": [f"ledger:{n}"], "timers": 0})
        for _ in range(timer_steps):
            steps.append({"scenario": name, "timers": rng.randint(1, 3)})
    for i, step in enumerate(steps):
        step.update(key=f"{kind}-{step['scenario']}-{i}", seed=rng.randrange(2**32))
    return steps


def summarize(records: list[dict]) -> dict:
    """Campaign figures: kills, and what the backend holds against the ledger."""
    lives = [lf for r in records for lf in r["lives"]]
    kills = [lf for lf in lives if lf["exit"] == -signal.SIGKILL]
    by_point: dict[str, int] = {}
    for lf in kills:
        label = lf["fault"] or "timer"
        by_point[label] = by_point.get(label, 0) + 1
    duplicates = missing = 0
    for r in records:
        ledger_ids = [a["job_id"] for a in r["attempts"]]
        job_ids = [j["job_id"] for j in r["jobs"]]
        duplicates += len(job_ids) - len(set(job_ids) & set(ledger_ids))  # jobs not in the ledger
        missing += sum(1 for j in ledger_ids if j not in job_ids)  # attempts with no job
    return {
        "steps": len(records),
        "runner_lives": len(lives),
        "runner_kills": len(kills),
        "runner_kills_by_point": dict(sorted(by_point.items())),
        "jobs": sum(len(r["jobs"]) for r in records),
        "ledger_attempts": sum(len(r["attempts"]) for r in records),
        "duplicate_or_orphan_jobs": duplicates,
        "attempts_without_a_job": missing,
        "attempts_left_open": sum(
            1 for r in records for a in r["attempts"] if a["state"] != "DONE" or not a["outcome"]
        ),
        "attempts_recorded_cancelled": sum(
            1 for r in records for a in r["attempts"] if a["outcome"] == "CANCELLED"
        ),
        "final_decision_differs": sum(
            1
            for r in records
            if r["final"]
            != (AWS_SCENARIOS if r["key"].startswith("aws") else SCENARIOS)[r["scenario"]][3]
        ),
    }


@contextlib.contextmanager
def moto_infra(out: Path) -> Iterator[tuple[dict, dict]]:
    """A moto server with the Batch queues (spot, on-demand) bootstrapped and an S3 bucket;
    yields the lab config and the fake credentials the lab process needs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: moto_lab
    from moto_lab import FAKE_AWS_ENV, bootstrap_queues, moto_server

    with moto_server() as moto:
        boot = bootstrap_queues(moto, bucket="ckpt")
        url = moto.url
        outputs = boot.outputs()
        cfg = {
            "kind": "aws",
            "url": url,
            "region": "us-east-1",
            "bucket": "ckpt",
            "spot_queue": outputs["spot_queue"],
            "on_demand_queue": outputs["on_demand_queue"],
            "out": str(out),
        }
        yield cfg, dict(FAKE_AWS_ENV)


def main(argv: list[str] | None = None) -> int:
    cfg = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    steps = plan(
        cfg["kind"],
        seed=cfg.get("seed", 11),
        timer_steps=cfg.get("timer_steps", 2),
        ledger_points=cfg.get("ledger_points", 6),
    )
    if cfg["kind"] == "aws":  # load the SDKs' service models once, not in every runner life
        import s3fs  # noqa: F401

        _aws_backend(cfg)
        _aws_jobs(cfg, {"key": "warm-up"})
    t0 = time.perf_counter()
    records = run_steps(cfg, steps, lanes=cfg.get("lanes", 4))
    print(json.dumps({"records": records, "wall_s": round(time.perf_counter() - t0, 1)}))
    return 0


def run_steps(cfg: dict, steps: list[dict], *, lanes: int) -> list[dict]:
    """Steps in ``lanes`` forked lanes (they mostly wait on their jobs); records in order."""
    out = Path(cfg["root"]) if cfg["kind"] == "local" else Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)

    def work(j: int) -> None:
        mine = [run_step(cfg, step) for step in steps[j::lanes]]
        (out / f"lane-{j}.json").write_text(json.dumps(mine))

    run_forked_lanes(lanes, work, what="runner-lab")
    records = [r for j in range(lanes) for r in json.loads((out / f"lane-{j}.json").read_text())]
    order = {step["key"]: i for i, step in enumerate(steps)}
    return sorted(records, key=lambda r: order[r["key"]])


if __name__ == "__main__":
    sys.exit(main())
