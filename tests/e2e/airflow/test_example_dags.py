"""The example DAGs of dags/ under dag.test() on the local backend (real processes, sqlite)."""

from __future__ import annotations

import json
import logging
import re

from reclaimer import reclaim_after_shards, reclaim_after_steps

from spot_workflows.examples.toy_train import reference
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


def job_dirs(state_dir) -> list[dict]:
    return [json.loads((d / "job.json").read_text()) for d in (state_dir / "jobs").iterdir()]


def final_checksum(state_dir, job_id: str) -> str:
    log = (state_dir / "jobs" / job_id / "output.log").read_text()
    return re.findall(r'"checksum": "([0-9a-f]{64})"', log)[-1]


def test_finetune_resumes_from_checkpoint_in_the_same_task_instance_and_escalates(
    run_dag, local_conn
):
    # the market reclaims the 1st spot attempt at step 60 and the 2nd at step 200 (by progress,
    # not by time: a loaded machine may take seconds to start training), each with a notice
    conn = local_conn(notice_window_s=0.5, grace_s=2)
    reclaims = reclaim_after_steps(conn["state_dir"], [60, 200])
    result = run_dag("spot_finetune", spot_conn_id=conn["conn_id"], steps=520)
    assert "error" not in reclaims, reclaims

    assert result.state == "success"
    ti = result.tis["finetune"]
    assert (str(ti.state), ti.try_number) == ("success", 1)  # one task instance, one try
    summary = result.xcom("finetune")
    assert summary["capacities"] == ["SPOT", "SPOT", "ON_DEMAND"]
    assert summary["outcomes"] == ["PREEMPTED", "PREEMPTED", "SUCCEEDED"]
    assert summary["escalated"] is True and summary["succeeded"] is True
    assert summary["history"] == "preempted 2 times on SPOT, escalated, ON_DEMAND attempt succeeded"
    assert summary["checkpoint_uri"].startswith(f"file://{conn['checkpoint_root']}/spot_finetune.")
    assert summary["console_url"] is None and "cost_usd" in summary
    assert result.xcom("finetune", "spot_summary") == summary
    assert result.xcom("report").endswith("-> ON_DEMAND")

    # the ledger next to the checkpoints tells the same story, and each attempt resumed further
    ledger = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"])
    attempts = ledger.attempts
    assert [(a.capacity.value, a.outcome.value) for a in attempts] == list(
        zip(summary["capacities"], summary["outcomes"], strict=True)
    )
    resumed = [a.resumed_from_step or 0 for a in attempts]
    # reclaimed at steps >= 60 and >= 200: at least the periodic checkpoints (every 50) before
    assert resumed[0] == 0 and 50 <= resumed[1] < resumed[2] < 520 and resumed[2] >= 200
    assert len(job_dirs(conn["state_dir"])) == 3
    last_log = (conn["state_dir"] / "jobs" / attempts[-1].job_id / "output.log").read_text()
    assert f"RESUME {resumed[2]}" in last_log  # the on-demand attempt started from the checkpoint
    # resuming twice from checkpoints changed nothing: same weights as an uninterrupted run
    assert final_checksum(conn["state_dir"], attempts[-1].job_id) == reference(520, 7)


def test_retry_after_a_worker_crash_reattaches_instead_of_resubmitting(
    run_dag, local_conn, tmp_path
):
    conn = local_conn()
    marker = tmp_path / "ran"
    result = run_dag("spot_test_crash", spot_conn_id=conn["conn_id"], marker=str(marker))

    assert result.state == "success"
    ti = result.tis["step"]
    assert ti.try_number == 2  # the crash cost one Airflow try ...
    assert len(job_dirs(conn["state_dir"])) == 1  # ... but no second job
    assert marker.read_text() == "ran\n"  # and the command ran once
    summary = result.xcom("step")
    assert summary["outcomes"] == ["SUCCEEDED"] and len(summary["attempts"]) == 1


def test_resume_dag_branches_to_on_demand_after_the_sensor_sees_the_reclaim(run_dag, local_conn):
    conn = local_conn(notice_window_s=0.5, grace_s=2)
    reclaims = reclaim_after_steps(conn["state_dir"], [60])  # by progress, with a notice
    result = run_dag("spot_resume_on_termination", spot_conn_id=conn["conn_id"], steps=300)
    assert "error" not in reclaims, reclaims

    assert result.task_state("train") == "failed"  # one spot shot, reclaimed
    notice = result.xcom("watch_train")
    assert notice["terminated"] is True and notice["kind"] in ("INTERRUPTION", "PREEMPTED")
    assert result.task_state("resume_on_demand") == "success"
    assert result.task_state("publish") == "success"
    assert result.state == "success"
    summary = result.xcom("resume_on_demand")
    # the resume continued the SAME step: one ledger, resumed from train's checkpoint
    assert (
        summary["step_key"]
        == notice["step_key"]
        == result.xcom("train", "spot_summary")["step_key"]
    )
    assert summary["capacities"] == ["SPOT", "ON_DEMAND"]
    assert summary["outcomes"] == ["PREEMPTED", "SUCCEEDED"]
    ledger = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"])
    assert ledger.attempts[1].resumed_from_step >= 50  # reclaimed at >= 60, saving every 25
    assert final_checksum(conn["state_dir"], ledger.attempts[1].job_id) == reference(300, 7)


def test_etl_dag_resumes_at_the_next_shard_and_outputs_every_row_once(
    run_dag, local_conn, tmp_path
):
    conn = local_conn(notice_window_s=1.0, grace_s=5)
    reclaimed = reclaim_after_shards(conn["state_dir"], conn["checkpoint_root"], shards=3)
    result = run_dag(
        "spot_etl_preprocess",
        spot_conn_id=conn["conn_id"],
        rows=120_000,
        rows_per_file=5_000,
        workers=2,
        delay_s=0.1,  # each worker has >= 2.4 s of batches: the reclaim lands mid-work
        data_dir=str(tmp_path / "raw"),
        output_dir=str(tmp_path / "out"),
    )

    assert result.state == "success" and "job_id" in reclaimed, reclaimed
    summary = result.xcom("preprocess")
    assert summary["capacities"] == ["SPOT", "SPOT"]
    assert summary["outcomes"] == ["PREEMPTED", "SUCCEEDED"]
    attempts = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"]).attempts
    assert 3 <= (attempts[1].resumed_from_step or 0) < 24  # resumed at the next unfinished shard
    log = (conn["state_dir"] / "jobs" / attempts[1].job_id / "output.log").read_text()
    checked = json.loads([line for line in log.splitlines() if '"verified"' in line][-1])
    assert checked["verified"] is True and checked["mismatched"] == []
    assert checked["rows"] == checked["distinct_rows"] == 120_000
    totals = result.xcom("load")
    assert totals["rows"] == 120_000 and totals["files"] == 24 and totals["tokens"] > 120_000


def test_a_step_that_waits_in_the_task_resumes_and_escalates_without_deferring(
    run_dag, local_conn, caplog
):
    caplog.set_level(logging.INFO)
    conn = local_conn(notice_window_s=0.5, grace_s=2)
    reclaims = reclaim_after_steps(conn["state_dir"], [60])  # the one spot attempt, by progress
    result = run_dag("spot_test_in_task", spot_conn_id=conn["conn_id"], steps=300)
    assert "error" not in reclaims, reclaims

    assert result.state == "success"
    ti = result.tis["train"]
    assert (str(ti.state), ti.try_number) == ("success", 1)
    assert "running trigger" not in caplog.text and "deferring on" not in caplog.text
    assert "[DAG TEST] end task task_id=train" in caplog.text  # the log was captured
    summary = result.xcom("train")
    assert summary["capacities"] == ["SPOT", "ON_DEMAND"]
    assert summary["outcomes"] == ["PREEMPTED", "SUCCEEDED"]
    ledger = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"])
    assert ledger.attempts[1].resumed_from_step >= 50  # reclaimed at >= 60, saving every 25
    assert len(job_dirs(conn["state_dir"])) == 2
    assert final_checksum(conn["state_dir"], ledger.attempts[1].job_id) == reference(300, 7)
