"""``flows/spot_finetune.py`` deployed to a real Prefect server and run by a real process worker.

No ``prefect_test_harness``: ``prefect server start``, ``prefect work-pool create``, ``prefect
deploy --all`` (from a copy of ``flows/``) and ``prefect worker start`` run as separate
processes, as users run them (see ``prefect_lab.py``). Two flow runs of ``finetune-local`` are
created back to back and run at the same time on the worker; each gets its own ``workdir`` (its
checkpoints and ledger) and both share the local spot cloud of ``SPOT_WORKFLOWS_LOCAL_DIR``.

The first two spot attempts of each step are reclaimed by progress (once the trainer printed
step 60, then step 160) through that local spot cloud, from this test process: a reclaim a fixed
number of seconds after the start (the deployment's default market) can come before a loaded
machine has even started training, leaving nothing to resume from.

Each run must complete after two spot attempts were reclaimed and an on-demand attempt finished
the step, every attempt after the first resuming from a checkpoint, with the final weights
bit-identical to an uninterrupted run; and every reclaim must have been announced on the job's
metadata endpoint (not only by SIGTERM), with no step submitted twice for one attempt.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect_lab import (
    FINAL_STATES,
    PREFECT,
    FlowRunEvidence,
    LabError,
    PrefectLab,
    ProgressReclaimer,
    last_step,
)

RUNS = 2
RUN_TIMEOUT_S = 240.0
"""Bound on the wait for both flow runs (created together) to reach a final state."""
RECLAIM_AT_STEPS = [60, 160]
"""The n-th spot attempt of each step is reclaimed once it has trained to this step (of 400)."""

pytestmark = [
    pytest.mark.timeout(900),  # far above the bounded waits below, which fail first and explain
    pytest.mark.skipif(not PREFECT.exists(), reason=f"no Prefect CLI at {PREFECT}"),
]


@dataclass
class Outcome:
    lab: PrefectLab
    runs: list[FlowRunEvidence]
    jobs: list[dict] | None
    """``spot-workflows local jobs --json`` after the runs; None without the ``local`` CLI."""
    jobs_error: str | None
    """Why ``local jobs`` gave no list, where the command exists but failed."""
    seconds: dict[str, float]


@contextmanager
def explained(lab: PrefectLab) -> Iterator[None]:
    """On a failure, print the tails of the lab's logs (pytest shows them with the failure)."""
    try:
        yield
    except (pytest.skip.Exception, pytest.xfail.Exception):
        raise
    except BaseException:
        print(lab.diagnostics())
        raise


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectLab]:
    """One real Prefect stack for the module's flow runs; stopped (by pid) at the end."""
    lab = PrefectLab(tmp_path_factory.mktemp("prefect-real"))
    t0 = time.monotonic()
    with explained(lab):
        try:
            lab.start()
        except BaseException:
            lab.stop()
            raise
    print(f"stack up in {time.monotonic() - t0:.1f}s")
    try:
        yield lab
    finally:
        lab.stop()
        if lab.leftovers:
            print("processes still running after the lab stopped (ended now):", *lab.leftovers)


@pytest.fixture(scope="module")
def outcome(lab: PrefectLab) -> Outcome:
    root = lab.root
    workdirs = [root / "runs" / f"run-{n}" for n in range(1, RUNS + 1)]
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    reclaimer = ProgressReclaimer(lab.local_dir, workdirs, RECLAIM_AT_STEPS)
    with explained(lab):
        try:
            reclaimer.start()
            ids = [
                # no reclaims by the clock ([]): the reclaimer reclaims by progress
                lab.run_deployment({"workdir": str(w), "reclaim_after_s": []}, key=w.name)
                for w in workdirs
            ]
            try:
                lab.wait_final(ids, timeout_s=RUN_TIMEOUT_S)
            except LabError as exc:  # the runs' states and evidence say more, in the tests
                print(exc)
            seconds["runs"] = time.monotonic() - t0
            reclaimer.stop()
            print("reclaimed by progress:", reclaimer.reclaimed)
            print("reclaims still waiting on:", reclaimer.waiting, "errors:", reclaimer.errors)
            runs = [lab.evidence(i, w) for i, w in zip(ids, workdirs, strict=True)]
            jobs, jobs_error = None, None
            if lab.has_local_cli():
                try:
                    jobs = lab.local_jobs()
                except (LabError, ValueError, KeyError, TypeError) as exc:
                    jobs_error = f"`spot-workflows local jobs --json` gave no job list: {exc}"
        finally:
            reclaimer.stop()
            seconds["total"] = time.monotonic() - t0
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})
    for run in runs:
        attempts = [a for doc in run.ledgers.values() for a in doc["attempts"]]
        rows = [(a["capacity"], a["outcome"], a["resumed_from_step"]) for a in attempts]
        print(f"flow run {run.flow_run_id}: {run.state_type}, attempts {rows}")
    return Outcome(lab=lab, runs=runs, jobs=jobs, jobs_error=jobs_error, seconds=seconds)


def ledger_of(run: FlowRunEvidence) -> tuple[str, list[dict]]:
    """The one step of a run: its key and the attempts of its ledger."""
    assert len(run.ledgers) == 1, f"expected one step ledger in {run.workdir}: {list(run.ledgers)}"
    ((step_key, doc),) = run.ledgers.items()
    return step_key, doc["attempts"]


def check_flow_run(run: FlowRunEvidence) -> None:
    """Completed; two spot attempts reclaimed, then on-demand succeeded; each attempt after the
    first resumed from a checkpoint; the final weights match an uninterrupted run."""
    where = f"flow run {run.flow_run_id}"
    assert run.state_type == "COMPLETED", (
        f"{where}: {run.state_type} ({run.state_name}): {run.state_message}"
    )
    step_key, attempts = ledger_of(run)
    rows = [(a["capacity"], a["outcome"], a["resumed_from_step"]) for a in attempts]
    preempted = [i for i, row in enumerate(rows) if row[:2] == ("SPOT", "PREEMPTED")]
    assert len(preempted) >= 2, f"{where}: fewer than 2 spot attempts reclaimed: {rows}"
    finished = [i for i, row in enumerate(rows) if row[:2] == ("ON_DEMAND", "SUCCEEDED")]
    assert finished and finished[-1] > preempted[-1], (
        f"{where}: no on-demand attempt succeeded after the reclaims: {rows}"
    )
    for number, (_, _, resumed) in enumerate(rows[1:], start=2):
        assert resumed is not None and resumed > 0, (
            f"{where}: attempt {number} did not resume from a checkpoint: {rows}"
        )
    summary = run.summary
    assert summary is not None, f"{where}: the flow's summary is not in its logs"
    assert summary["step_key"] == step_key, (summary["step_key"], step_key)
    assert [(a["capacity"], a["outcome"]) for a in summary["attempts"]] == [r[:2] for r in rows]
    assert summary["matches_uninterrupted_run"] is True, (
        f"{where}: the final weights differ from an uninterrupted run: {summary}"
    )


def check_local_jobs(jobs: list[dict], step_keys: list[str]) -> None:
    """Against ``spot-workflows local jobs --json``: every reclaimed spot job of each step was
    told on its metadata endpoint (``notice_served``), and no step has two jobs for one
    attempt (a duplicate submission)."""
    per_attempt = Counter((job["step_key"], job["attempt"]) for job in jobs)
    duplicates = {key: n for key, n in per_attempt.items() if n > 1}
    assert not duplicates, f"more than one job for (step key, attempt): {duplicates}"
    for step_key in step_keys:
        mine = [job for job in jobs if job["step_key"] == step_key]
        reclaimed = [
            job for job in mine if job["capacity"] == "SPOT" and job["outcome"] == "PREEMPTED"
        ]
        table = [
            {k: job.get(k) for k in ("job_id", "attempt", "capacity", "state", "exit_code")}
            | {k: job.get(k) for k in ("outcome", "reclaimed", "notice_served")}
            for job in mine
        ]
        assert len(reclaimed) >= 2, f"{step_key}: fewer than 2 reclaimed spot jobs: {table}"
        for job in reclaimed:
            assert job["reclaimed"] is True, f"{step_key}: preempted but not reclaimed: {table}"
            assert job["notice_served"] is True, (
                f"{step_key}: job {job['job_id']} was reclaimed without a notice on its "
                f"metadata endpoint: {table}"
            )


def test_each_flow_run_is_reclaimed_twice_resumes_and_finishes_on_demand(outcome: Outcome):
    assert len(outcome.runs) == RUNS
    with explained(outcome.lab):
        for run in outcome.runs:
            check_flow_run(run)


def test_reclaim_notices_reached_the_metadata_endpoint_without_duplicate_jobs(outcome: Outcome):
    if outcome.jobs_error is not None:
        pytest.fail(outcome.jobs_error)
    if outcome.jobs is None:
        pytest.skip("spot-workflows has no `local` CLI group yet (`local jobs --json`)")
    with explained(outcome.lab):
        check_local_jobs(outcome.jobs, [ledger_of(run)[0] for run in outcome.runs])


# -- a crashed flow run, retried: one live job per step --------------------------------------------
CRASH_PARAMS = {"steps": 400, "every": 40, "step_seconds": 0.1, "reclaim_after_s": []}
"""One uninterrupted spot attempt of ~40 s of training: long enough to kill the flow run in the
middle of it and retry the run while the job still runs (no reclaims: ``[]``)."""
KILL_AT_STEP = 20
"""The flow-run process is SIGKILLed once the step's job has trained to this step."""
CRASH_TIMEOUT_S = 120.0
"""Bound on each wait of the crash scenario (job started, run crashed, retry finished)."""


@dataclass
class CrashRetry:
    """A flow run SIGKILLed mid-step and retried twice (``prefect flow-run retry``)."""

    lab: PrefectLab
    flow_run_id: str
    step_key: str
    job_id: str
    """The step's job when the flow-run process was killed."""
    killed_pid: int
    state_after_kill: str | None
    job_state_at_retry: str | None
    """The job's state in the local cloud when the retried flow run was RUNNING again."""
    after_crash_retry: FlowRunEvidence
    run_count_after_crash_retry: int
    jobs_after_crash_retry: list[dict]
    """``spot-workflows local jobs --json``, the jobs of this step only."""
    after_second_retry: FlowRunEvidence
    run_count_after_second_retry: int
    summaries_after_second_retry: int
    jobs_after_second_retry: list[dict]
    seconds: dict[str, float]


def _step_ledger(workdir: Path) -> dict | None:
    for path in (workdir / "checkpoints").glob("*/ledger.json"):
        try:
            return json.loads(path.read_text())
        except ValueError:  # being replaced: read it next time
            return None
    return None


def _summaries(logs: list[str]) -> int:
    return sum('"matches_uninterrupted_run"' in message for message in logs)


@pytest.fixture(scope="module")
def crash(lab: PrefectLab) -> CrashRetry:
    from spot_workflows.backends.local import LocalBackend

    backend = LocalBackend(state_dir=lab.local_dir)
    workdir = lab.root / "runs" / "crash"
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    with explained(lab):
        run_id = lab.run_deployment(CRASH_PARAMS | {"workdir": str(workdir)}, key="crash")
        # the step's job is training (its attempt is in the ledger, with its job id): kill the
        # process that runs the flow (the worker's child), not the job
        deadline = time.monotonic() + CRASH_TIMEOUT_S
        job_id, step_key = None, None
        while True:
            ledger = _step_ledger(workdir)
            attempts = (ledger or {}).get("attempts") or []
            if attempts and attempts[-1].get("job_id"):
                job_id, step_key = attempts[-1]["job_id"], ledger["step_key"]
                if last_step(backend.log_path(job_id)) >= KILL_AT_STEP:
                    break
            if time.monotonic() > deadline:
                raise LabError(f"no job at step {KILL_AT_STEP} within {CRASH_TIMEOUT_S:.0f}s")
            time.sleep(0.1)
        pid = lab.flow_run_process(run_id)
        assert pid is not None, f"no process runs flow run {run_id}"
        os.kill(pid, signal.SIGKILL)
        seconds["killed"] = time.monotonic() - t0
        crashed = lab.wait_state(run_id, FINAL_STATES, timeout_s=CRASH_TIMEOUT_S)
        lab.retry_flow_run(run_id)
        lab.wait_state(run_id, {"RUNNING"} | FINAL_STATES, timeout_s=CRASH_TIMEOUT_S)
        mine = [j for j in backend.jobs() if j["job_id"] == job_id]
        job_state_at_retry = mine[0].get("state") if mine else None
        seconds["retried_run_started"] = time.monotonic() - t0
        print(f"retried run started; job {job_id} {job_state_at_retry} at step", end=" ")
        print(last_step(backend.log_path(job_id)), f"of {CRASH_PARAMS['steps']}")
        lab.wait_final([run_id], timeout_s=CRASH_TIMEOUT_S)
        first = lab.evidence(run_id, workdir)
        count_first = lab.flow_run(run_id)["run_count"]
        jobs_first = [j for j in lab.local_jobs() if j["step_key"] == step_key]
        seconds["crash_retry"] = time.monotonic() - t0

        # the step succeeded: a retry of the completed run runs the flow again, not the step
        lab.retry_flow_run(run_id)
        lab.wait_final([run_id], timeout_s=CRASH_TIMEOUT_S)
        deadline = time.monotonic() + 20.0  # a run's last logs reach the server after its state
        while True:
            second = lab.evidence(run_id, workdir)
            if _summaries(second.logs) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        count_second = lab.flow_run(run_id)["run_count"]
        jobs_second = [j for j in lab.local_jobs() if j["step_key"] == step_key]
        seconds["second_retry"] = time.monotonic() - t0 - seconds["crash_retry"]
    seconds["total"] = time.monotonic() - t0
    print("crash scenario seconds:", {k: round(v, 1) for k, v in seconds.items()})
    return CrashRetry(
        lab=lab,
        flow_run_id=run_id,
        step_key=step_key,
        job_id=job_id,
        killed_pid=pid,
        state_after_kill=(crashed.get("state") or {}).get("type"),
        job_state_at_retry=job_state_at_retry,
        after_crash_retry=first,
        run_count_after_crash_retry=count_first,
        jobs_after_crash_retry=jobs_first,
        after_second_retry=second,
        run_count_after_second_retry=count_second,
        summaries_after_second_retry=_summaries(second.logs),
        jobs_after_second_retry=jobs_second,
        seconds=seconds,
    )


def _jobs_table(jobs: list[dict]) -> list[dict]:
    keys = ("job_id", "job_name", "attempt", "capacity", "state", "outcome")
    return [{k: job.get(k) for k in keys} for job in jobs]


def test_a_flow_run_killed_mid_step_and_retried_reattaches_to_its_live_job(crash: CrashRetry):
    """SIGKILL of the flow-run process while the step's job runs, then ``prefect flow-run
    retry``: the retried run re-attaches to that job (still running when the run restarted), the
    local cloud has no second job for the attempt, and the run completes with the ledger showing
    one successful attempt and weights bit-identical to an uninterrupted run."""
    run = crash.after_crash_retry
    with explained(crash.lab):
        per_attempt = Counter(job["attempt"] for job in crash.jobs_after_crash_retry)
        assert per_attempt == Counter({1: 1}), (
            f"jobs of {crash.step_key} by attempt: {dict(per_attempt)}; "
            f"{_jobs_table(crash.jobs_after_crash_retry)}"
        )
        assert [j["job_id"] for j in crash.jobs_after_crash_retry] == [crash.job_id]
        assert crash.state_after_kill == "CRASHED", (
            f"the killed flow run is {crash.state_after_kill}, not CRASHED"
        )
        assert crash.job_state_at_retry == "RUNNING", (
            f"job {crash.job_id} was {crash.job_state_at_retry} when the retried run started: "
            "nothing live to re-attach to (kill earlier or train longer)"
        )
        assert crash.run_count_after_crash_retry == 2, crash.run_count_after_crash_retry
        assert run.state_type == "COMPLETED", (
            f"{run.state_type} ({run.state_name}): {run.state_message}"
        )
        step_key, attempts = ledger_of(run)
        assert step_key == crash.step_key
        rows = [(a["number"], a["capacity"], a["outcome"], a["job_id"]) for a in attempts]
        assert rows == [(1, "SPOT", "SUCCEEDED", crash.job_id)], rows
        assert run.summary is not None, "the flow's summary is not in its logs"
        assert run.summary["matches_uninterrupted_run"] is True, run.summary


def test_a_retry_after_the_step_succeeded_does_not_run_it_again(crash: CrashRetry):
    """``prefect flow-run retry`` of the completed run: the flow runs again and completes, the
    step returns its recorded success (no new job, the ledger's attempts unchanged)."""
    before, after = crash.after_crash_retry, crash.after_second_retry
    with explained(crash.lab):
        assert crash.run_count_after_second_retry == crash.run_count_after_crash_retry + 1
        assert after.state_type == "COMPLETED", (
            f"{after.state_type} ({after.state_name}): {after.state_message}"
        )
        assert crash.summaries_after_second_retry == 2, "the retried flow printed no summary"
        assert ledger_of(after) == ledger_of(before), (ledger_of(before), ledger_of(after))
        assert _jobs_table(crash.jobs_after_second_retry) == _jobs_table(
            crash.jobs_after_crash_retry
        )


POOL_DEPLOYMENT = "spot-pool/pool-local"
POOL_TIMEOUT_S = 180.0


def test_a_pool_flow_races_two_zones_and_one_job_does_the_work(lab: PrefectLab):
    """``flows/spot_pool.py`` deployed and run by the worker: its step keeps a pending attempt in
    ``zone-a`` (no spot) and ``zone-b`` (spot); ``zone-b``'s runs and succeeds, ``zone-a``'s is
    recorded RACED and its job never starts."""
    workdir = lab.root / "runs" / "pool"
    with explained(lab):
        run_id = lab.run_deployment({"workdir": str(workdir)}, key="pool", name=POOL_DEPLOYMENT)
        lab.wait_final([run_id], timeout_s=POOL_TIMEOUT_S)
        run = lab.evidence(run_id, workdir)
        assert run.state_type == "COMPLETED", (run.state_name, run.state_message)
        ((step_key, ledger),) = run.ledgers.items()
        rows = [(a["number"], a["placement"], a["outcome"]) for a in ledger["attempts"]]
        won = [a for a in ledger["attempts"] if a["outcome"] == "SUCCEEDED"]
        assert [a["placement"] for a in won] == ["zone-b"], rows
        assert all(a["outcome"] == "RACED" for a in ledger["attempts"] if a not in won), rows
        assert any(a["placement"] == "zone-a" for a in ledger["attempts"]), rows
        assert run.summary is not None and run.summary["matches_uninterrupted_run"], run.summary
        if lab.has_local_cli():
            started = [
                j["attempt"]
                for j in lab.local_jobs()
                if j["step_key"] == step_key and j.get("started_at")
            ]
            assert started == [won[0]["number"]], (started, rows)
