"""The runner over the local backend: real subprocesses, real signals, real metadata HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket, TraceMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Action, Capacity, Outcome
from spot_workflows.demo import DemoConfig, last_step_in_log, run_demo
from spot_workflows.errors import BackendError, StepFailedError
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

TRAIN = [sys.executable, "-m", "spot_workflows.examples.toy_train"]


def spec_for(tmp_path: Path, command: list[str], key: str = "step") -> StepSpec:
    return StepSpec(key=key, command=command, checkpoint_uri=f"file://{tmp_path / 'ckpt'}")


def job_dirs(state_dir: Path) -> list[dict]:
    return [json.loads((d / "job.json").read_text()) for d in (state_dir / "jobs").iterdir()]


def test_reclaimed_twice_resumes_from_checkpoint_and_escalates(tmp_path):
    summary = run_demo(
        DemoConfig(
            steps=300, every=40, step_seconds=0.01, reclaim_at_steps=(90, 190), workdir=tmp_path
        )
    )
    outcomes = [(r["capacity"], r["outcome"]) for r in summary["attempts"]]
    assert outcomes == [
        ("SPOT", "PREEMPTED"),
        ("SPOT", "PREEMPTED"),
        ("ON_DEMAND", "SUCCEEDED"),
    ]
    assert summary["escalated"] is True
    resumed = [r["resumed_from_step"] for r in summary["attempts"]]
    # reclaimed once past steps 90 and 190; the notice lands a few steps later
    assert resumed[0] == 0 and 90 <= resumed[1] < 190 <= resumed[2] < 300
    # the notice window allowed an emergency save each time: nothing was lost
    assert [r["steps_lost"] for r in summary["attempts"][:2]] == [0, 0]
    assert summary["final_checksum"] == summary["reference_checksum"]


def test_reclaim_without_notice_loses_steps_but_still_matches(tmp_path):
    spec = spec_for(tmp_path, [*TRAIN, "--steps=200", "--every=25", "--step-seconds=0.01"])
    with LocalBackend(state_dir=tmp_path / "b", notice_window_s=0, grace_s=0) as backend:
        runner = StepRunner(spec=spec, backend=backend, poll_interval=0.05)
        reclaimed = False
        while (decision := runner.tick()).action not in (Action.SUCCEED, Action.FAIL):
            live = runner.ledger.live
            if not reclaimed and live is not None and live.job_id is not None:
                reached = last_step_in_log(backend.log_path(live.job_id)) or 0
                if reached >= 40:  # past the first periodic checkpoint (25), before the second
                    backend.reclaim(live.job_id)
                    reclaimed = True
            time.sleep(0.02)
        assert decision.action is Action.SUCCEED
        log = backend.log_path(runner.ledger.attempts[-1].job_id).read_text()
    first, second = runner.ledger.attempts
    assert first.outcome is Outcome.PREEMPTED and first.exit_code == 137  # SIGKILL, no notice
    assert second.capacity is Capacity.SPOT and second.outcome is Outcome.SUCCEEDED
    assert second.resumed_from_step is not None and second.resumed_from_step % 25 == 0
    from spot_workflows.examples.toy_train import reference

    assert json.loads(log.strip().splitlines()[-1])["checksum"] == reference(200, 7)


def test_reclaim_of_an_on_demand_attempt_is_refused(tmp_path):
    spec = spec_for(tmp_path, ["sh", "-c", "sleep 1"], key="od")
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        job = backend.submit(spec, job_name="od-a1", attempt=1, capacity=Capacity.ON_DEMAND)
        with pytest.raises(BackendError, match="not a launched spot attempt"):
            backend.reclaim(job)


def test_app_error_is_not_charged_to_the_preemption_budget(tmp_path):
    spec = spec_for(tmp_path, ["sh", "-c", "echo boom >&2; exit 3"])
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        runner = StepRunner(spec=spec, backend=backend, policy=SpotPolicy(), poll_interval=0.05)
        with pytest.raises(StepFailedError, match="app error exit 3"):
            runner.run()
    attempts = Ledger.open(CheckpointStore(spec.checkpoint_uri), "step").attempts
    assert [(a.capacity, a.outcome) for a in attempts] == [(Capacity.SPOT, Outcome.APP_ERROR)]


def test_no_spot_capacity_times_out_and_escalates(tmp_path):
    spec = spec_for(tmp_path, ["sh", "-c", "exit 0"])
    market = ScheduledMarket(unavailable=[(0, 3600)])
    policy = SpotPolicy(capacity_timeout_s=0.5)
    with LocalBackend(state_dir=tmp_path / "b", market=market) as backend:
        result = StepRunner(spec=spec, backend=backend, policy=policy, poll_interval=0.05).run()
    first, second = result.attempts
    assert (first.capacity, first.outcome) == (Capacity.SPOT, Outcome.NO_CAPACITY)
    assert first.started_at is None  # it never ran
    assert (second.capacity, second.outcome) == (Capacity.ON_DEMAND, Outcome.SUCCEEDED)
    assert result.escalated


def test_trace_market_waits_for_capacity_then_runs(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0, 0, 1, 1, 1]}))
    market = TraceMarket.from_file(trace, tick_seconds=0.4)
    spec = spec_for(tmp_path, ["sh", "-c", "exit 0"])
    with LocalBackend(state_dir=tmp_path / "b", market=market) as backend:
        t0 = time.time()
        result = StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
    only = result.attempts[0]
    assert only.capacity is Capacity.SPOT and only.outcome is Outcome.SUCCEEDED
    assert only.started_at - t0 >= 0.7  # waited two unavailable ticks


RUNNER_SCRIPT = """
import sys
from spot_workflows.backends.local import LocalBackend
from spot_workflows.config import StepSpec
from spot_workflows.runner import StepRunner
spec = StepSpec.model_validate_json(sys.argv[1])
with LocalBackend(state_dir=sys.argv[2]) as backend:
    StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
"""


def test_rerun_after_runner_crash_reattaches_without_duplicate(tmp_path):
    marker = tmp_path / "ran"
    spec = spec_for(tmp_path, ["sh", "-c", f"echo x >> {marker}; sleep 2; exit 0"], key="crashy")
    state_dir = tmp_path / "b"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER_SCRIPT, spec.model_dump_json(), str(state_dir)]
    )
    deadline = time.time() + 20
    while time.time() < deadline and not marker.exists():
        time.sleep(0.05)
    assert marker.exists(), "the attempt never started"
    os.kill(proc.pid, signal.SIGKILL)  # the runner dies while the attempt is running
    proc.wait()
    with LocalBackend(state_dir=state_dir) as backend:
        result = StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
    assert [a.outcome for a in result.attempts] == [Outcome.SUCCEEDED]
    assert len(job_dirs(state_dir)) == 1  # one job ever submitted
    assert marker.read_text() == "x\n"  # the command ran once


def test_crash_between_record_and_submit_is_resolved_by_job_name(tmp_path):
    spec = spec_for(tmp_path, ["sh", "-c", "exit 0"], key="wal")
    store = CheckpointStore(spec.checkpoint_uri)
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        # attempt 1: recorded and submitted, but the job id never reached the ledger
        ledger = Ledger.open(store, "wal")
        a1 = ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
        backend.submit(spec, job_name=a1.job_name, attempt=1, capacity=Capacity.SPOT)
        result = StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
    assert len(result.attempts) == 1 and result.attempts[0].job_id is not None
    assert len(job_dirs(tmp_path / "b")) == 1


def test_recorded_but_never_submitted_attempt_is_submitted_once(tmp_path):
    spec = spec_for(tmp_path, ["sh", "-c", "exit 0"], key="wal2")
    # a runner process records the attempt, then ends (crashes) before it submits it
    record = (
        "import sys, time\n"
        "from spot_workflows.core.outcomes import Capacity\n"
        "from spot_workflows.ledger import Ledger\n"
        "from spot_workflows.runtime.store.checkpoint_store import CheckpointStore\n"
        "ledger = Ledger.open(CheckpointStore(sys.argv[1]), 'wal2')\n"
        "ledger.begin(capacity=Capacity.SPOT, backend='local', now=time.time())\n"
    )
    subprocess.run([sys.executable, "-c", record, spec.checkpoint_uri], check=True, timeout=60)
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        result = StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
    assert [a.outcome for a in result.attempts] == [Outcome.SUCCEEDED]
    assert len(job_dirs(tmp_path / "b")) == 1


def test_running_a_finished_step_again_submits_nothing(tmp_path):
    spec = spec_for(tmp_path, ["sh", "-c", "exit 0"], key="done")
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
        again = StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
    assert again.succeeded and len(again.attempts) == 1
    assert len(job_dirs(tmp_path / "b")) == 1


def test_every_attempt_gets_the_worker_contract_environment(tmp_path):
    out = tmp_path / "env.json"
    code = (
        "import json,os; json.dump({k: v for k, v in os.environ.items() "
        f"if k.startswith('SPOT_')}}, open({str(out)!r}, 'w'))"
    )
    spec = spec_for(tmp_path, [sys.executable, "-c", code], key="envy")
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        StepRunner(spec=spec, backend=backend, poll_interval=0.05).run()
    env = json.loads(out.read_text())
    assert env["SPOT_CHECKPOINT_URI"] == spec.checkpoint_uri
    assert env["SPOT_STEP_KEY"] == "envy"
    assert env["SPOT_ATTEMPT"] == "1"
    assert env["SPOT_CAPACITY"] == "SPOT"
    assert env["SPOT_NOTICE_SOURCE"] == "local"


def test_stopping_a_running_attempt_waits_for_its_emergency_checkpoint(tmp_path):
    from spot_workflows.core.outcomes import AttemptState, Decision

    spec = spec_for(tmp_path, [*TRAIN, "--steps=100000", "--every=1000", "--step-seconds=0.01"])
    with LocalBackend(state_dir=tmp_path / "b", grace_s=10) as backend:
        runner = StepRunner(spec=spec, backend=backend, poll_interval=0.05)
        runner.tick()  # submit
        live = runner.ledger.live
        deadline = time.time() + 30
        while (
            time.time() < deadline and (last_step_in_log(backend.log_path(live.job_id)) or 0) < 20
        ):
            time.sleep(0.05)
            runner.reconcile()
        assert runner.ledger.live.state is AttemptState.RUNNING
        runner.execute(Decision.cancel(Outcome.STOPPED, "switching capacity (test)"))
        # execute() returned: the worker has exited and its emergency checkpoint is durable
        obs = backend.describe([live.job_id])[live.job_id]
        assert obs.state is AttemptState.DONE
        stopped = runner.ledger.attempts[0]
        assert stopped.outcome is Outcome.STOPPED
        reached = last_step_in_log(backend.log_path(live.job_id))
        assert stopped.last_checkpoint_step == reached == runner.store.latest().step
