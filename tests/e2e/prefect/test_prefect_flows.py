"""The example flows as real Prefect flow runs on the local backend, against the test server."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.schemas.automations import AutomationCore
from reclaimer import reclaim_after_shards, reclaim_after_steps

from spot_workflows.backends.local import LocalBackend
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.ledger import Ledger
from spot_workflows.prefect import (
    LocalBackendBlock,
    SpotPolicyBlock,
    artifact_key,
    event_name,
    run_spot_step,
)
from spot_workflows.pricing import load_catalog
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

FLOWS = Path(__file__).resolve().parents[3] / "flows"
COST = 9  # column of the cost in the artifact's table


def load_flow_module(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", FLOWS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    """One run of flows/spot_finetune.py: reclaimed twice, escalated, finished on on-demand."""
    workdir = tmp_path_factory.mktemp("finetune")
    module = load_flow_module("spot_finetune")
    reclaims = reclaim_after_steps(workdir / "backend", [80, 200])
    state = module.spot_finetune(
        # the 1st spot attempt is reclaimed at step 80, the 2nd at step 200 (by progress: a
        # loaded machine may take seconds to start training), so on-demand has work left
        steps=400,
        every=40,
        step_seconds=0.03,
        reclaim_after_s=[],
        preemption_budget=2,
        workdir=str(workdir),
        state_dir=str(workdir / "backend"),  # this test's own local cloud, watched above
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert "error" not in reclaims, reclaims
    summary = state.result()
    ledger = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"])
    return {
        "summary": summary,
        "attempts": list(ledger.attempts),
        "flow_run_id": state.state_details.flow_run_id,
        "workdir": workdir,
    }


def test_reclaims_resume_from_checkpoint_and_escalate(finetune):
    attempts = finetune["attempts"]
    assert [(a.capacity, a.outcome) for a in attempts] == [
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.SPOT, Outcome.PREEMPTED),
        (Capacity.ON_DEMAND, Outcome.SUCCEEDED),
    ]
    resumed = [a.resumed_from_step for a in attempts]
    assert resumed[0] is None
    assert 80 <= resumed[1] < 200 <= resumed[2] < 400, resumed  # every 40 + saved at the notice
    assert finetune["summary"]["escalated"] is True
    assert finetune["summary"]["matches_uninterrupted_run"] is True
    # one job per attempt in the local spot cloud, each of them in the ledger
    key = finetune["summary"]["step_key"]
    jobs = [j for j in LocalBackend(state_dir=finetune["workdir"] / "backend").jobs()]
    assert all(j["step_key"] == key for j in jobs)
    assert sorted(j["job_id"] for j in jobs) == sorted(a.job_id for a in attempts)
    assert sorted(j["attempt"] for j in jobs) == [1, 2, 3]


def test_events_name_the_step_and_its_jobs(finetune, wait_for_events):
    key = finetune["summary"]["step_key"]
    events = wait_for_events(
        resource_id=f"spot-workflows.step.{key}",
        done=lambda evs: any(e.event == event_name("succeeded") for e in evs),
    )
    names = [e.event for e in events]
    assert names.count("spot-workflows.step.preempted") == 2, names
    assert names.count("spot-workflows.step.escalated") == 1, names
    assert names.count("spot-workflows.step.succeeded") == 1, names
    assert names.count("spot-workflows.step.submitted") == 3, names
    assert names.index("spot-workflows.step.escalated") > names.index(
        "spot-workflows.step.preempted"
    )
    attempts = finetune["attempts"]
    preempted = [e for e in events if e.event == "spot-workflows.step.preempted"]
    for event, attempt in zip(preempted, attempts[:2], strict=True):
        assert event.resource.id == f"spot-workflows.step.{key}"
        assert event.resource["spot-workflows.backend"] == "local"
        jobs = [r for r in event.related if r.role == "job"]
        assert [j.id for j in jobs] == [f"spot-workflows.job.local.{attempt.job_id}"]
        assert event.payload["capacity"] == "SPOT" and event.payload["outcome"] == "PREEMPTED"
    escalated = next(e for e in events if e.event == "spot-workflows.step.escalated")
    assert escalated.payload["capacity"] == "ON_DEMAND"
    # Prefect relates the flow run the step ran in, so automations can act on it
    flow_run = f"prefect.flow-run.{finetune['flow_run_id']}"
    assert all(flow_run in [r.id for r in e.related] for e in events)


def test_artifact_holds_the_attempt_ledger(finetune, client):
    key = finetune["summary"]["step_key"]
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(key)]))
    )
    assert len(artifacts) == 1
    art = artifacts[0]
    assert art.type == "markdown" and art.flow_run_id == finetune["flow_run_id"]
    rows = [line for line in art.data.splitlines() if line.startswith("| ") and "---" not in line]
    header, *body = rows
    assert "capacity" in header and "cost" in header
    assert len(body) == 3
    # the local backend is priced like a V100 in the packaged catalog: billed run time x price
    price = load_catalog().find("local", "local")
    total = 0.0
    for row, attempt in zip(body, finetune["attempts"], strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:4] == [
            str(attempt.number),
            attempt.capacity.value,
            attempt.outcome.value,
            attempt.job_id,
        ]
        hourly = price.spot if attempt.capacity is Capacity.SPOT else price.on_demand
        cost = attempt.run_seconds() / 3600 * hourly
        assert cells[COST] == f"${cost:.4f}"
        total += cost
    assert f"**Estimated cost:** ${total:.4f} (spot $" in art.data
    assert "savings" in art.data and "unpriced" not in art.data
    assert "succeeded" in art.description


def test_no_capacity_escalation_fires_the_example_automation(tmp_path, client, wait_for_events):
    doc = yaml.safe_load((FLOWS / "automations.yaml").read_text())
    automations = [AutomationCore.model_validate(a) for a in doc["automations"]]
    escalated = next(a for a in automations if a.name == "spot-step-escalated")
    automation_id = client.create_automation(escalated)

    @flow
    def starved() -> str:
        result = run_spot_step(
            name="starved",
            command=["sh", "-c", "exit 0"],
            backend=LocalBackendBlock(
                state_dir=str(tmp_path / "b"),
                checkpoint_root=f"file://{tmp_path / 'ckpt'}",
                spot_unavailable=[(0, 3600)],
            ),
            policy=SpotPolicyBlock(capacity_timeout_s=0.5),
            poll_interval=0.1,
        )
        assert [a.outcome for a in result.attempts] == [Outcome.NO_CAPACITY, Outcome.SUCCEEDED]
        return result.step_key

    key = starved()
    events = wait_for_events(
        resource_id=f"spot-workflows.step.{key}",
        done=lambda evs: any(e.event == event_name("succeeded") for e in evs),
    )
    names = [e.event for e in events]
    assert "spot-workflows.step.no-capacity" in names, names
    nc = names.index("spot-workflows.step.no-capacity")
    assert names.index("spot-workflows.step.escalated") > nc
    # the server's trigger service matched the escalation and ran the automation's action
    fired = wait_for_events(
        resource_id=f"prefect.automation.{automation_id}",
        done=lambda evs: any(e.event == "prefect.automation.action.executed" for e in evs),
    )
    assert "prefect.automation.action.executed" in [e.event for e in fired], fired


def test_etl_example_resumes_at_the_next_shard_and_outputs_every_row_once(tmp_path):
    module = load_flow_module("spot_etl")
    reclaimed = reclaim_after_shards(tmp_path / "backend", tmp_path / "checkpoints", shards=3)
    summary = module.spot_etl(
        rows=120_000,
        rows_per_file=5_000,
        workers=2,
        reclaim_after_s=[],  # reclaimed by progress instead (above), whatever the machine's load
        delay_s=0.1,
        workdir=str(tmp_path),
        output=str(tmp_path / "clean"),
        state_dir=str(tmp_path / "backend"),  # this test's own local cloud, watched above
    )
    assert "job_id" in reclaimed, reclaimed
    outcomes = [(a["capacity"], a["outcome"]) for a in summary["attempts"]]
    assert outcomes == [("SPOT", "PREEMPTED"), ("SPOT", "SUCCEEDED")]
    assert 3 <= summary["attempts"][1]["resumed_from_shards_done"] < 24
    assert summary["rows"] == 120_000 and summary["files"] == 24
    ledger = Ledger.open(CheckpointStore(summary["checkpoint_uri"]), summary["step_key"])
    job = ledger.attempts[-1].job_id
    log = next((tmp_path / "backend").glob(f"**/jobs/{job}/output.log")).read_text()
    checked = json.loads([line for line in log.splitlines() if '"verified"' in line][-1])
    assert checked["verified"] is True and checked["distinct_rows"] == 120_000
    # the scratch data is gone once checked; the output, ledger and checkpoints stay
    assert summary["output"] == str(tmp_path / "clean") and summary["scratch_deleted"] is True
    assert len(list((tmp_path / "clean").glob("part-*.parquet"))) == 24
    step_dir = tmp_path / "checkpoints" / summary["step_key"]
    assert (step_dir / "ledger.json").is_file() and (step_dir / "latest.json").is_file()
    assert not (step_dir / "shards" / "out").exists()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [p.name for p in run_dir.iterdir()] == ["checked.json"], list(run_dir.iterdir())
