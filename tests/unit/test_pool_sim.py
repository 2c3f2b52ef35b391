"""The pool simulator: semantics on hand-made traces, the baselines, the CLI (no fakes)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from spot_workflows.cli_sim import simulate as simulate_cmd
from spot_workflows.config import SpotPolicy
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.core.pools import decide_pool
from spot_workflows.errors import ConfigError
from spot_workflows.sim import Cell, load_trace, pool_placements, run_pool, trace_from_data
from spot_workflows.sim.pool import Driver, simulate_pool
from spot_workflows.sim.pool_baselines import RrUpDriver, UpOrDriver

H = 3600.0
SPOT_PRICE, OD_PRICE = 0.9731, 3.06
PAIR = ["aws-10-26-2022/us-west-2a_v100_1", "aws-10-26-2022/us-west-2b_v100_1"]


def hourly(name, data):
    return trace_from_data(name, H, data)


def policy(work_h, deadline_h, restart_h, strategy="auto"):
    return SpotPolicy(
        strategy=strategy,
        deadline_s=deadline_h * H,
        work_s=work_h * H,
        restart_overhead_s=restart_h * H,
        max_attempts=200,
    )


def run(traces, work_h, deadline_h, restart_h, *, driver=None, race_cost_s=300.0, strategy="auto"):
    return simulate_pool(
        traces,
        0,
        policy(work_h, deadline_h, restart_h, strategy),
        work_s=work_h * H,
        restart_overhead_s=restart_h * H,
        race_cost_s=race_cost_s,
        driver=driver,
    )


def spot_runs(result):
    return [
        (a.placement, a.started_at / H)
        for a in result.ledger
        if a.capacity is Capacity.SPOT
        and a.started_at is not None
        and a.outcome is not Outcome.RACED
    ]


def test_the_first_placement_with_capacity_wins_and_the_pending_loser_costs_nothing():
    a = hourly("a", [0, 0, 0] + [1] * 30)
    b = hourly("b", [0, 1] + [1] * 31)
    r = run([a, b], 4, 20, 0)
    assert not r.missed
    assert spot_runs(r) == [("b", 1.0)]
    raced = [x for x in r.ledger if x.outcome is Outcome.RACED]
    assert [(x.placement, x.started_at) for x in raced] == [("a", None)]
    assert r.cost_usd == pytest.approx(4 * SPOT_PRICE)


def test_a_loser_that_started_in_the_same_tick_costs_the_race_cost():
    a = hourly("a", [0, 1] + [1] * 30)
    b = hourly("b", [0, 1] + [1] * 30)
    free = run([a, b], 4, 20, 0, race_cost_s=0)
    paid = run([a, b], 4, 20, 0, race_cost_s=300)
    assert spot_runs(paid) == [("a", 1.0)]  # equal prices: the lowest attempt number is kept
    assert [x.started_at for x in paid.ledger if x.outcome is Outcome.RACED] == [H]
    assert paid.cost_usd - free.cost_usd == pytest.approx(300 / H * SPOT_PRICE)


def test_a_reclaim_sends_the_next_attempt_elsewhere_and_the_restart_is_billed():
    a = hourly("a", [1, 1, 0] + [1] * 30)
    b = hourly("b", [1] * 33)
    r = run([a, b], 4, 20, 0.5)
    assert spot_runs(r) == [("a", 0.0), ("b", 2.0)]
    assert [x.outcome for x in r.ledger if x.outcome is not Outcome.RACED] == [
        Outcome.PREEMPTED,
        Outcome.SUCCEEDED,
    ]
    # two starts of 0.5 h each: 4 h of work take 5 h of spot
    assert r.cost_usd == pytest.approx(5 * SPOT_PRICE)


def test_our_policy_learns_spot_only_from_its_attempts():
    seen = []

    def recording(attempts, policy, placements, **kw):
        seen.append(kw["outlook"].spot_available)
        return decide_pool(attempts, policy, placements, **kw)

    traces = [load_trace(p) for p in PAIR]
    r = run(traces, 48, 52, 0.2, driver=Driver(pool_placements(traces), decider=recording))
    assert not r.missed and seen and set(seen) == {None}


def test_handoff_from_on_demand_to_a_started_probe():
    traces = [load_trace(p.replace("v100_1", "v100_8")) for p in PAIR]
    cell = Cell(48, 52, 0.2, 12)
    handoffs = 0
    for start in traces[0].starts(52, cell.starts):
        r = simulate_pool(
            traces, start, cell.policy("auto"), work_s=48 * H, restart_overhead_s=0.2 * H
        )
        assert not r.missed
        for i, x in enumerate(r.ledger):
            if x.handoff:
                handoffs += 1
                assert x.capacity is Capacity.ON_DEMAND and x.outcome is Outcome.STOPPED
                nxt = [y for y in r.ledger[i + 1 :] if y.started_at == x.ended_at]
                assert any(
                    y.capacity is Capacity.SPOT and y.outcome is not Outcome.RACED for y in nxt
                )
    assert handoffs > 0


def test_baselines_see_the_pool_differently():
    # a has spot only at hours 0-1; b from hour 2 on: up_or moves at once, rr_up a tick later
    a = hourly("a", [1, 1] + [0] * 40)
    b = hourly("b", [0, 0] + [1] * 40)
    places = pool_placements([a, b])
    up_or = run([a, b], 4, 30, 0, driver=UpOrDriver(places), strategy="uniform_progress")
    rr_up = run([a, b], 4, 30, 0, driver=RrUpDriver(places), strategy="uniform_progress")
    assert spot_runs(up_or) == [("a", 0.0), ("b", 2.0)]
    assert spot_runs(rr_up) == [("a", 0.0), ("b", 3.0)]


def test_reference_cell_reproduces_the_published_baselines():
    traces = [load_trace(p) for p in PAIR]
    out = run_pool(traces, Cell(48, 52, 0.2, 60))
    assert out["rr_up"]["mean_cost_fraction"] == pytest.approx(0.578, abs=0.005)
    assert out["up_or"]["mean_cost_fraction"] == pytest.approx(0.563, abs=0.005)
    assert out["deadline_misses"] == 0
    assert out["mean_cost_fraction"] <= out["up_or"]["mean_cost_fraction"]


@pytest.mark.parametrize(
    ("second", "match"),
    [
        (trace_from_data("b", 300, [1] * 40), "share one gap"),
        (hourly("b", [1] * 39), "aligned in time"),
    ],
)
def test_misaligned_pools_are_refused(second, match):
    with pytest.raises(ConfigError, match=match):
        run([hourly("a", [1] * 40), second], 4, 20, 0)


# -- CLI ---------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(simulate_cmd, list(args))


def test_cli_pool_json():
    args = ["--work-hours", "48", "--deadline-hours", "52", "--overhead-hours", "0.2"]
    res = invoke("--pool", PAIR[0], "--pool", PAIR[1], *args, "--starts", "6", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("mean_cost_fraction", "deadline_misses"):
        assert key in out and key in out["rr_up"] and key in out["up_or"]
    assert out["scenarios"] == 6 and out["race_cost_s"] == 300


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pool", PAIR[0]], "--pool needs at least 2 traces"),
        (["--pool", PAIR[0], "--pool", PAIR[1], "--trace", PAIR[0]], "not both"),
        (["--pool", PAIR[0], "--pool", PAIR[1], "--race-cost-s", "-1"], "--race-cost-s must"),
        (["--pool", PAIR[0], "--pool", "no/such-trace"], "no such file"),
    ],
)
def test_cli_pool_bad_input_is_one_line_exit_2(extra, message):
    res = invoke(*extra, "--work-hours", "48", "--deadline-hours", "52", "--restart-hours", "0.2")
    assert res.exit_code == 2
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_pool_misaligned_traces(tmp_path):
    for name, gap in (("a", 600), ("b", 300)):
        (tmp_path / f"{name}.json").write_text(
            json.dumps({"metadata": {"gap_seconds": gap}, "data": [1] * 2000})
        )
    res = invoke(
        "--pool", str(tmp_path / "a.json"), "--pool", str(tmp_path / "b.json"),
        "--work-hours", "4", "--deadline-hours", "6", "--restart-hours", "0.1",
    )  # fmt: skip
    assert res.exit_code == 2 and "share one gap" in res.output
