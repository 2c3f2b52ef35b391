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

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from prefect_lab import PREFECT, FlowRunEvidence, LabError, PrefectLab, ProgressReclaimer

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
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("prefect-real")
    lab = PrefectLab(root)
    workdirs = [root / "runs" / f"run-{n}" for n in range(1, RUNS + 1)]
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    reclaimer = ProgressReclaimer(lab.local_dir, workdirs, RECLAIM_AT_STEPS)
    with explained(lab):
        try:
            lab.start()
            seconds["stack_up"] = time.monotonic() - t0
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
            seconds["runs"] = time.monotonic() - t0 - seconds["stack_up"]
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
            lab.stop()
            seconds["total"] = time.monotonic() - t0
    if lab.leftovers:
        print("processes still running after the lab stopped (ended now):", *lab.leftovers)
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
