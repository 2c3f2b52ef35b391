"""Checkpointed fine-tune on spot, escalating to on-demand (spot-workflows example DAG).

Out of the box it runs on the local backend's demo connection (``spot_local_demo``): the first two
spot attempts of the step are reclaimed 2 s after their first checkpoint (a 1 s notice on the
metadata endpoint, then SIGTERM), each resumes from the emergency checkpoint it saved, and the
third attempt escalates to on-demand. The toy trainer checkpoints every 10 steps (about every
0.3 s) and its 400 steps take about 12 s. Point it at a cloud by params only::

    airflow dags test spot_finetune                      # local demo, no cloud
    airflow dags trigger spot_finetune --conf '{"spot_conn_id": "aws_spot"}'
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from spot_workflows.airflow.operators import SpotStepOperator

with DAG(
    dag_id="spot_finetune",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["spot-workflows", "example"],
    params={
        "spot_conn_id": Param("spot_local_demo", type="string", description="backend connection"),
        "steps": Param(400, type="integer", minimum=1, description="training steps"),
        "policy": Param(
            {"preemption_budget": 2, "capacity_timeout_s": 600},
            type="object",
            description="SpotPolicy fields (docs/concepts.md)",
        ),
        "resources": Param({"gpus": 0}, type="object", description="image, gpus, vcpus, ..."),
    },
) as dag:
    finetune = SpotStepOperator(
        task_id="finetune",
        spot_conn_id="{{ params.spot_conn_id }}",
        command=[
            "python",
            "-m",
            "spot_workflows.examples.toy_train",
            "--steps={{ params.steps }}",
            "--every=10",
            "--step-seconds=0.03",
        ],
        policy="{{ params.policy }}",
        step_resources="{{ params.resources }}",
        poll_interval=1.0,
    )

    @task
    def report(summary: dict) -> str:
        """One line for the run's log: what the step went through."""
        line = f"{summary['step_key']}: {summary['history']} -> {summary['final_capacity']}"
        print(line)
        return line

    report(finetune.output)
