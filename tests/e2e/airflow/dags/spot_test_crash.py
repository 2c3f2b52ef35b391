"""Test DAG: the worker dies right after the first try submitted its job (before deferring)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import TaskDeferred

from spot_workflows.airflow.operators import SpotStepOperator


class CrashAfterSubmitOperator(SpotStepOperator):
    """Try 1 submits, then "crashes" instead of deferring; Airflow retries the task."""

    def execute(self, context):
        try:
            return super().execute(context)
        except TaskDeferred:
            if context["ti"].try_number == 1:
                raise RuntimeError("simulated worker crash right after submitting") from None
            raise


with DAG(
    dag_id="spot_test_crash",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "spot_conn_id": Param("spot_local_default", type="string"),
        "marker": "/dev/null",
        "resources": Param({}, type="object"),
    },
) as dag:
    CrashAfterSubmitOperator(
        task_id="step",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=["sh", "-c", "echo ran >> {{ params.marker }}; sleep 1"],
        step_resources="{{ params.resources }}",
        retries=1,
        retry_delay=timedelta(seconds=0),
        poll_interval=0.2,
    )
