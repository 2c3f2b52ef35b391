"""Test DAG: events are injected into the local events file; the deferrable sensor must fire on
the one that matches (watched step, kind, after the run started) and the resume branch runs."""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import DAG, Param, task

from spot_workflows.airflow.sensors import SpotTerminationSensor

with DAG(
    dag_id="spot_test_sensor",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"spot_conn_id": Param("spot_local_default", type="string"), "step_key": "watched"},
) as dag:

    @task
    def inject(params=None) -> None:
        from spot_workflows.airflow.connections import EVENTS_FILE, local_state_dir
        from spot_workflows.airflow.hooks import SpotBackendHook
        from spot_workflows.backends.local.events import append_event

        path = local_state_dir(SpotBackendHook(spot_conn_id=params["spot_conn_id"]).get_info())
        now, key = time.time(), params["step_key"]
        for event in (
            {"event": "notice", "at": now - 3600, "step_key": key, "job_id": "local-old"},
            {"event": "notice", "at": now, "step_key": "other-step", "job_id": "local-other"},
            {"event": "rebalance", "at": now, "step_key": key, "job_id": "local-rebalance"},
            {"event": "notice", "at": now, "step_key": key, "job_id": "local-injected"},
        ):
            append_event(path / EVENTS_FILE, event)

    watch = SpotTerminationSensor(
        task_id="watch",
        spot_conn_id="{{ params.spot_conn_id }}",
        step_key="{{ params.step_key }}",
        kinds=["INTERRUPTION"],
        poke_interval=0.2,
        timeout=60,
    )

    @task.branch
    def choose(notice: dict) -> str:
        return "resume" if notice["terminated"] else "carry_on"

    @task
    def resume(notice: dict) -> str:
        return f"resuming {notice['step_key']} after {notice['kind']} on {notice['job_id']}"

    @task
    def carry_on() -> str:
        return "no termination"

    inject() >> watch
    choose(watch.output) >> [resume(watch.output), carry_on()]
