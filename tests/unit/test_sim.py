"""The trace simulator: semantics on hand-made traces, the scenario rule, the CLI (no fakes)."""

from __future__ import annotations

import json
import math
import random

import pytest
from click.testing import CliRunner

from spot_workflows.cli_sim import simulate as simulate_cmd
from spot_workflows.config import SpotPolicy
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.errors import ConfigError
from spot_workflows.sim import OMNISCIENT, Cell, load_trace, policy_names, run, trace_from_data
from spot_workflows.sim.engine import simulate
from spot_workflows.sim.grid import omniscient_cost

H = 3600.0
OD, SPOT = 3.06, 0.9731


def hourly(data):
    return trace_from_data("hand", H, data)


def policy(name, work_h, deadline_h, restart_h, **kw):
    return SpotPolicy(
        strategy=name,
        deadline_s=deadline_h * H,
        work_s=work_h * H,
        restart_overhead_s=restart_h * H,
        max_attempts=200,
        **kw,
    )


def run_one(name, data, work_h, deadline_h, restart_h, **kw):
    p = policy(name, work_h, deadline_h, restart_h, **kw)
    return simulate(hourly(data), 0, p, work_s=work_h * H, restart_overhead_s=restart_h * H)


def test_scenario_rule_is_floor_k_times_t_minus_n_over_s():
    trace = hourly([1] * 100)
    # n = ceil(10 h / 1 h) + 2 = 12
    assert trace.needed_ticks(10) == 12
    assert trace.starts(10, 4) == [0, 22, 44, 66]
    with pytest.raises(ConfigError, match="needs 102"):
        trace.starts(100, 1)


def test_uniform_progress_on_a_hand_made_trace():
    """W = 3 h, D = 6 h (line 0.5 h per hour), d = 0.5 h, 1 h ticks; spot from tick 2 on.

    t=0 idle, on the line: wait. t=1 behind the line (0 < 0.5): ON_DEMAND, 0.5 h done.
    t=2 spot, but 0.5 < line(t+2d)=1.5: stay on ON_DEMAND, 1.5 h. t=3: 1.5 < 2: stay, 2.5 h.
    t=4: 2.5 >= 2.5: switch to spot, 3 h done. Billed: 3 ON_DEMAND hours + 1 SPOT hour.
    """
    result = run_one("uniform_progress", [0, 0] + [1] * 8, 3, 6, 0.5)
    assert result.cost_usd == pytest.approx(3 * OD + SPOT)
    assert not result.missed and result.finished_s == 5 * H
    assert result.attempts == 3  # SPOT (no capacity), ON_DEMAND (stopped), SPOT (succeeded)


def test_uniform_progress_attempts_are_the_real_ledger():
    result = run_one("uniform_progress", [0, 0] + [1] * 8, 3, 6, 0.5)
    assert [(a.capacity, a.outcome, a.ended_at / H) for a in result.ledger] == [
        (Capacity.SPOT, Outcome.NO_CAPACITY, 1.0),
        (Capacity.ON_DEMAND, Outcome.STOPPED, 4.0),
        (Capacity.SPOT, Outcome.SUCCEEDED, 5.0),
    ]
    assert "switch" not in result.ledger[0].reason  # reasons come from the planner
    assert "SPOT capacity available" in result.ledger[1].reason


def test_greedy_waits_until_the_last_safe_moment_then_commits():
    """Same trace: idle until t=2, when 3 h of work + 2d fill the 4 h left: ON_DEMAND to the end
    (the spot that just came back is not taken: a reclaim there would be fatal)."""
    result = run_one("greedy", [0, 0] + [1] * 8, 3, 6, 0.5)
    assert result.cost_usd == pytest.approx(4 * OD)
    assert result.finished_s == 6 * H and not result.missed
    assert [a.outcome for a in result.ledger] == [Outcome.STOPPED, Outcome.SUCCEEDED]


def test_preemption_keeps_progress_and_the_safety_net_meets_the_deadline():
    """W = 3, D = 5, d = 0.5: spot 2 ticks (1.5 h done), reclaimed at t=2 with 1.5 h left and
    3 h to go. UP and greedy: 1.5 + 2d >= 3 so ON_DEMAND to the end, done at t=4. Ours: its
    safety net is exact (ON_DEMAND needs 2 ticks and 3 are left), so it waits one more tick for
    spot, then ON_DEMAND from t=3, done exactly at the deadline."""
    for name, done_h in (("uniform_progress", 4), ("greedy", 4), ("deadline", 5)):
        result = run_one(name, [1, 1] + [0] * 6, 3, 5, 0.5)
        assert result.cost_usd == pytest.approx(2 * SPOT + 2 * OD), name
        assert result.finished_s == done_h * H and not result.missed


def test_a_miss_is_work_left_at_the_deadline():
    # 'attempts' waits for spot until the capacity timeout, then ON_DEMAND: too late
    result = run_one("attempts", [0] * 8, 3, 4, 0.5)
    assert result.missed and result.work_left_s == pytest.approx(0.5 * H)
    assert result.cost_usd == pytest.approx(3 * OD)


def test_budget_cap_is_never_exceeded():
    rng = random.Random(3)
    data = [int(rng.random() < 0.6) for _ in range(400)]
    trace = trace_from_data("random", 600, data)
    for budget in (30.0, 40.0, 60.0):
        p = policy("deadline", 20, 26, 0.1, budget_usd=budget)
        for start in trace.starts(26, 8):
            result = simulate(trace, start, p, work_s=20 * H, restart_overhead_s=0.1 * H)
            assert result.cost_usd <= budget + 1e-9
            if result.failure:
                assert "budget" in result.failure


def test_deadline_policy_never_misses_on_synthetic_traces():
    rng = random.Random(11)
    traces = []
    for name, p_up, p_down in (("flappy", 0.5, 0.5), ("long", 0.05, 0.1), ("scarce", 0.3, 0.05)):
        state, data = 1, []
        for _ in range(600):
            data.append(state)
            if rng.random() < (p_up if state else p_down):
                state = 1 - state
        traces.append(trace_from_data(name, 600, data))
    for restart in (0.05, 0.2):
        out = run(traces, Cell(24, 30, restart, 5), "deadline")
        assert out["deadline_misses"] == 0
        assert out["scenarios"] == 15


@pytest.mark.parametrize("gap", [600.0, 1800.0])
def test_exact_safety_net_never_misses_at_tight_deadlines(gap):
    """Ours spends slack down to the last whole tick: random traces, overheads shorter and
    longer than a tick, deadlines from very tight to loose; not one miss."""
    rng = random.Random(int(gap))
    traces = []
    for k, (p_up, p_down) in enumerate(((0.5, 0.5), (0.2, 0.3), (0.05, 0.4))):
        state, data = 1, []
        for _ in range(int(40 * H / gap)):
            data.append(state)
            if rng.random() < (p_up if state else p_down):
                state = 1 - state
        traces.append(trace_from_data(f"r{k}", gap, data))
    for restart in (0.05, 0.2, 0.6):
        for slack in (0.0, 1.0, 4.0):
            # the tightest deadline ON_DEMAND alone meets in whole ticks, then looser ones
            ticks = math.ceil((6 + restart) * H / gap) + math.ceil(slack * H / gap)
            out = run(traces, Cell(6, ticks * gap / H, restart, 4), "deadline")
            assert out["deadline_misses"] == 0, (restart, slack)


def test_omniscient_bound_uses_every_spot_tick_before_the_deadline():
    trace = hourly([1, 0, 1, 0, 0, 0, 0, 0])
    cell = Cell(3, 5, 0.5, 1)
    assert omniscient_cost(trace, 0, cell) == pytest.approx(2 * SPOT + 1 * OD)
    summary = run([trace], cell, OMNISCIENT)
    assert summary["mean_cost_fraction"] == pytest.approx(round((2 * SPOT + OD) / (3 * OD), 4))


def test_policy_names_and_unknown_policy():
    names = policy_names()
    assert {"auto", "deadline", "uniform_progress", "greedy", "attempts", OMNISCIENT} <= set(names)
    with pytest.raises(ConfigError, match="unknown escalation strategy"):
        run([hourly([1] * 20)], Cell(3, 5, 0.5, 1), "magic")


def test_load_trace_reads_the_shared_format(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"metadata": {"gap_seconds": 32}, "data": [0, 2, 1, 0]}))
    trace = load_trace(path)
    assert trace.gap_s == 32 and trace.available == (False, True, True, False)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not a spot trace"):
        load_trace(bad)


def test_simulate_command_json_and_list(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"metadata": {"gap_seconds": 3600}, "data": [1, 1, 0] * 10}))
    cli = CliRunner()
    listed = cli.invoke(simulate_cmd, ["--policy", "list"])
    assert listed.exit_code == 0 and "uniform_progress" in listed.output.split()
    args = ["--trace", str(path), "--work-hours", "3", "--deadline-hours", "5"]
    args += ["--restart-hours", "0.5", "--starts", "3", "--policy", "deadline", "--json"]
    out = cli.invoke(simulate_cmd, args)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["policy"] == "deadline" and doc["scenarios"] == 3
    assert set(doc) >= {"deadline_misses", "mean_cost_fraction", "traces"}
    assert doc["traces"][0]["trace"] == "t"
    missing = cli.invoke(simulate_cmd, ["--policy", "deadline"])
    assert missing.exit_code != 0 and "--trace" in missing.output
