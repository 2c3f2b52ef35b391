"""The termination sensor on injected events; readable errors for bad policies."""

from __future__ import annotations

import textwrap

import pytest
from airflow.dag_processing.dagbag import DagBag

from spot_workflows.airflow.operators import SpotStepOperator
from spot_workflows.errors import ConfigError


def test_deferrable_sensor_fires_on_the_injected_notice_and_the_resume_branch_runs(
    run_dag, local_conn
):
    conn = local_conn()
    result = run_dag("spot_test_sensor", spot_conn_id=conn["conn_id"], step_key="watched")

    assert result.state == "success"
    notice = result.xcom("watch")
    # not the old notice, not another step's, not the rebalance (kinds=INTERRUPTION only)
    assert (notice["terminated"], notice["kind"], notice["job_id"]) == (
        True,
        "INTERRUPTION",
        "local-injected",
    )
    assert result.task_state("resume") == "success"
    assert result.xcom("resume") == "resuming watched after INTERRUPTION on local-injected"
    assert result.task_state("carry_on") == "skipped"


def test_bad_policy_in_dag_params_fails_the_task_naming_the_field(run_dag, local_conn, capfd):
    conn = local_conn()
    result = run_dag(
        "spot_finetune",
        spot_conn_id=conn["conn_id"],
        policy={"preemption_budget": -1, "capacity_timeout_s": 60},
    )
    assert result.task_state("finetune") == "failed"
    assert result.task_state("report") == "upstream_failed"
    out = capfd.readouterr()
    assert "invalid spot policy: preemption_budget: Input should be greater than or equal to 0" in (
        out.out + out.err
    )
    assert not (conn["state_dir"] / "jobs").exists() or not any(
        (conn["state_dir"] / "jobs").iterdir()
    )  # nothing was submitted


def test_bad_policy_written_in_the_dag_file_is_an_import_error(tmp_path):
    dag_file = tmp_path / "bad_policy_dag.py"
    dag_file.write_text(
        textwrap.dedent(
            """
            from datetime import datetime
            from airflow.sdk import DAG
            from spot_workflows.airflow.operators import SpotStepOperator

            with DAG("bad_policy", schedule=None, start_date=datetime(2026, 1, 1)):
                SpotStepOperator(task_id="t", command=["true"], policy={"max_atempts": 3})
            """
        )
    )
    errors = DagBag(dag_folder=str(dag_file)).import_errors
    assert list(errors) == [str(dag_file)]
    assert (
        "invalid spot policy: max_atempts: Extra inputs are not permitted" in errors[str(dag_file)]
    )


def test_operator_rejects_bad_values_it_can_check_at_parse_time():
    with pytest.raises(ConfigError, match="unknown escalation strategy 'cheapest'"):
        SpotStepOperator(task_id="a", command=["true"], policy={"strategy": "cheapest"})
    with pytest.raises(ConfigError, match="poll_interval must be > 0"):
        SpotStepOperator(task_id="b", command=["true"], poll_interval=0)
    with pytest.raises(ConfigError, match=r"unknown resources field\(s\) \['gpu'\]"):
        SpotStepOperator(task_id="d", command=["true"], step_resources={"gpu": 1})
    # templated values are checked when the task runs, after rendering
    SpotStepOperator(task_id="c", command=["true"], policy="{{ params.policy }}")


def test_killing_a_task_that_waits_in_itself_cancels_its_live_job(tmp_path):
    import time

    from spot_workflows.backends.local import LocalBackend
    from spot_workflows.config import StepSpec
    from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome

    op = SpotStepOperator(task_id="t", command=["sleep", "60"], deferrable=False)
    op.on_kill()  # not waiting on anything: a no-op
    spec = StepSpec(key="k", command=["sleep", "60"], checkpoint_uri=f"file://{tmp_path}/ckpt")
    from spot_workflows.ledger import Ledger
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    ledger = Ledger.open(CheckpointStore(spec.checkpoint_uri), spec.key)
    attempt = ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        job = backend.submit(spec, job_name=attempt.job_name, attempt=1, capacity=Capacity.SPOT)
        ledger.update(ledger.set_job_id(attempt, job), watcher="d/t/r/-1#try2")
        # what _wait_in_task sets while it sleeps (the live jobs); an older try (a newer one
        # re-attached)
        op._waiting_on = (backend, [job], spec.checkpoint_uri, spec.key, "d/t/r/-1#try1")
        op.on_kill()
        assert backend.describe([job])[job].state is not AttemptState.DONE  # left alone
        assert ledger.refresh().attempt(1).stopping is None
        op._waiting_on = (backend, [job], spec.checkpoint_uri, spec.key, "d/t/r/-1#try2")
        op.on_kill()  # the watching try: recorded as stopped first, then cancelled
        assert ledger.refresh().attempt(1).stopping is Outcome.STOPPED
        deadline = time.time() + 30
        while (seen := backend.describe([job])[job]).state is not AttemptState.DONE:
            assert time.time() < deadline, seen
            time.sleep(0.05)
    assert seen.outcome is Outcome.CANCELLED and "Airflow task was stopped" in (seen.reason or "")
