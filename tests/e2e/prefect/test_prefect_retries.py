"""Prefect task retries and flow-run retries re-attach through the ledger: never a duplicate job."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, runtime
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from spot_workflows.core.outcomes import Outcome
from spot_workflows.errors import StepFailedError
from spot_workflows.ledger import Ledger
from spot_workflows.prefect import LocalBackendBlock, SpotPolicyBlock, spot_task
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


def backend_for(tmp_path: Path) -> LocalBackendBlock:
    return LocalBackendBlock(
        state_dir=str(tmp_path / "b"), checkpoint_root=f"file://{tmp_path / 'ckpt'}"
    )


def jobs_of(tmp_path: Path, key: str) -> list[dict]:
    """The step's jobs in the test's local spot cloud (state dir ``tmp_path / "b"``)."""
    jobs = tmp_path / "b" / "jobs"
    docs = [json.loads((d / "job.json").read_text()) for d in jobs.iterdir()]
    return [doc for doc in docs if doc.get("step_key") == key]


def task_runs_of(client, flow_run_id) -> list:
    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


def test_task_retry_after_a_crash_reattaches_without_a_duplicate(tmp_path, client):
    marker = tmp_path / "ran"

    def crash_after_the_first_submit(event):
        # the first try dies right after the backend accepted the job (and the ledger has it)
        if event.kind == "submitted" and runtime.task_run.run_count == 1:
            raise RuntimeError("simulated crash of the orchestrating process")

    @spot_task(
        backend=backend_for(tmp_path),
        retries=2,
        poll_interval=0.05,
        on_event=crash_after_the_first_submit,
    )
    def train() -> list[str]:
        return ["sh", "-c", f"echo x >> {marker}; sleep 1; exit 0"]

    @flow
    def crashy():
        return train()

    state = crashy(return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert [a.outcome for a in result.attempts] == [Outcome.SUCCEEDED]
    assert len(jobs_of(tmp_path, result.step_key)) == 1  # one job ever submitted
    assert marker.read_text() == "x\n"  # and the command ran once
    (run,) = task_runs_of(client, state.state_details.flow_run_id)
    assert run.run_count == 2  # the retry happened, and re-attached


def test_flow_run_retry_derives_the_same_key_and_submits_nothing(tmp_path, client):
    seen: list[str] = []

    @spot_task(backend=backend_for(tmp_path), poll_interval=0.05)
    def prep() -> list[str]:
        return ["sh", "-c", "exit 0"]

    @flow(retries=1)
    def flaky_after_the_step():
        first = prep()
        second = prep.submit().result()  # a second call of the same step: its own key
        seen.extend([first.step_key, second.step_key])
        if runtime.flow_run.run_count == 1:
            raise RuntimeError("the flow fails after its spot steps finished")
        return first

    state = flaky_after_the_step(return_state=True)
    assert state.is_completed(), state.message
    run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.run_count == 2
    assert seen[0] == seen[2] and seen[1] == seen[3] and seen[0] != seen[1]
    assert str(run.id).replace("-", "") in seen[0]
    for key in seen[:2]:
        assert len(jobs_of(tmp_path, key)) == 1  # the retry found them done: no new job
        ledger = Ledger.open(CheckpointStore(f"file://{tmp_path / 'ckpt' / key}"), key)
        assert [a.outcome for a in ledger.attempts] == [Outcome.SUCCEEDED]


def test_a_planner_failure_is_final_prefect_does_not_retry_it(tmp_path, client):
    @spot_task(
        backend=backend_for(tmp_path),
        policy=SpotPolicyBlock(app_error_retries=0),
        retries=3,
        poll_interval=0.05,
    )
    def buggy() -> list[str]:
        return ["sh", "-c", "echo boom >&2; exit 3"]

    @flow
    def fails():
        return buggy()

    state = fails(return_state=True)
    assert state.is_failed()
    try:
        state.result()
    except StepFailedError as exc:
        assert "app error exit 3" in exc.reason
        key = exc.step_key
    else:  # pragma: no cover - the assertion below explains
        raise AssertionError("the flow should fail with StepFailedError")
    (run,) = task_runs_of(client, state.state_details.flow_run_id)
    assert run.run_count == 1  # retries=3 was not spent on a decided failure
    assert len(jobs_of(tmp_path, key)) == 1
