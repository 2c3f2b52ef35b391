"""Deadline and budget on the live path: the runner, the local backend, a replayed spot trace."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import TraceMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.deadline import spent_usd
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.errors import BudgetExceededError, DeadlineInfeasibleError
from spot_workflows.examples.toy_train import reference
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner, market_probe
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

STEPS = 120
TRAIN = [
    sys.executable,
    "-m",
    "spot_workflows.examples.toy_train",
    f"--steps={STEPS}",
    "--every=10",
    "--step-seconds=0.02",
]


def spec_for(tmp_path: Path, command: list[str], key: str) -> StepSpec:
    return StepSpec(key=key, command=command, checkpoint_uri=f"file://{tmp_path / 'ckpt'}")


def test_spot_capacity_disappears_and_the_step_escalates_in_time(tmp_path):
    # spot for the first 2 s of the trace, then none: the step is reclaimed and spot never returns
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [1, 1] + [0] * 100}))
    market = TraceMarket.from_file(trace, tick_seconds=1.0)
    # the exact safety net keeps no reserve beyond the declared overhead, so declare what a restart
    # really costs here: launch + interpreter start-up + restore, ~2 s on a busy 2-core machine
    policy = SpotPolicy(deadline_s=20.0, work_s=4.0, restart_overhead_s=3.0)
    spec = spec_for(tmp_path, TRAIN, "deadline-step")
    events = []
    with LocalBackend(
        state_dir=tmp_path / "b", market=market, notice_window_s=0.5, grace_s=1.0
    ) as backend:
        runner = StepRunner(
            spec=spec, backend=backend, policy=policy, poll_interval=0.05, on_event=events.append
        )
        result = runner.run()
        log = backend.log_path(result.attempts[-1].job_id).read_text()
    outcomes = [(a.capacity, a.outcome) for a in result.attempts]
    assert outcomes[0] == (Capacity.SPOT, Outcome.PREEMPTED)
    assert outcomes[-1] == (Capacity.ON_DEMAND, Outcome.SUCCEEDED)
    # while waiting for spot the planner gave up on it in time, not at a capacity timeout
    assert all(o is Outcome.NO_CAPACITY for _, o in outcomes[1:-1])
    first, last = result.attempts[0], result.attempts[-1]
    assert last.ended_at - first.submitted_at <= policy.deadline_s
    assert any(e.kind == "escalated" for e in events)
    assert json.loads(log.strip().splitlines()[-1])["checksum"] == reference(STEPS, 7)


def test_budget_cap_stops_the_step_before_it_is_exceeded(tmp_path):
    policy = SpotPolicy(budget_usd=2.0, spot_usd_per_hour=3600.0)  # $1 per second on spot
    spec = spec_for(tmp_path, ["sh", "-c", "sleep 30"], "budget-step")
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        runner = StepRunner(spec=spec, backend=backend, policy=policy, poll_interval=0.05)
        with pytest.raises(BudgetExceededError, match=r"budget cap") as err:
            runner.run()
    attempts = Ledger.open(CheckpointStore(spec.checkpoint_uri), "budget-step").attempts
    assert [(a.capacity, a.outcome) for a in attempts] == [(Capacity.SPOT, Outcome.STOPPED)]
    spent = spent_usd(attempts, policy, now=attempts[-1].ended_at)
    assert 1.0 < spent <= policy.budget_usd
    assert "$2.00" in str(err.value)


def test_infeasible_deadline_is_refused_before_anything_runs(tmp_path):
    policy = SpotPolicy(deadline_s=60.0, work_s=120.0)
    spec = spec_for(tmp_path, ["sh", "-c", "exit 0"], "too-late")
    with LocalBackend(state_dir=tmp_path / "b") as backend:
        runner = StepRunner(spec=spec, backend=backend, policy=policy, poll_interval=0.05)
        with pytest.raises(DeadlineInfeasibleError, match="deadline infeasible"):
            runner.run()
    assert Ledger.open(CheckpointStore(spec.checkpoint_uri), "too-late").attempts == ()


def test_with_a_market_probe_the_step_switches_back_from_on_demand_to_spot(tmp_path):
    # no spot for the first 3 s, then spot; 10 s of slack for 120 s of work, 2 s restarts: too
    # little slack to wait for spot at first (reserve 0.07 x 130 s), enough to switch back later
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [0, 0, 0] + [1] * 100}))
    market = TraceMarket.from_file(trace, tick_seconds=1.0)
    policy = SpotPolicy(deadline_s=130.0, work_s=120.0, restart_overhead_s=2.0)
    spec = spec_for(tmp_path, ["sh", "-c", "sleep 60"], "probe-step")
    with LocalBackend(
        state_dir=tmp_path / "b", market=market, notice_window_s=0.5, grace_s=1.0
    ) as backend:
        assert market_probe(backend) is not None
        runner = StepRunner(
            spec=spec,
            backend=backend,
            policy=policy,
            poll_interval=0.05,
            spot_probe=market_probe(backend),
        )
        reasons = []
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:
            reasons.append(runner.tick().reason)
            attempts = runner.ledger.attempts
            if len(attempts) >= 2 and attempts[-1].capacity is Capacity.SPOT:
                break
            time.sleep(0.05)
        for live in [a for a in runner.ledger.attempts if a.live and a.job_id]:
            backend.cancel(live.job_id, reason="test over")
    attempts = runner.ledger.attempts
    shape = [(a.capacity, a.outcome) for a in attempts]
    # (a first SPOT attempt may wait one poll for capacity: an outage's first tick)
    assert shape[-2:] == [(Capacity.ON_DEMAND, Outcome.STOPPED), (Capacity.SPOT, None)], reasons
    assert all(o is Outcome.NO_CAPACITY for c, o in shape[:-2]), shape
    assert "switching back to SPOT" in attempts[-2].reason
    # without a probe the same runner would keep ON_DEMAND: the ledger cannot see spot come back
    assert market_probe(object()) is None
