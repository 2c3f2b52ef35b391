"""The clairvoyant bound: exact on hand-made pools, never above any policy on the dev traces."""

from __future__ import annotations

import math

import pytest

from spot_workflows.config import SpotPolicy
from spot_workflows.errors import ConfigError
from spot_workflows.sim import Cell, load_trace, trace_from_data
from spot_workflows.sim.clairvoyant import clairvoyant_cost, restart_progress
from spot_workflows.sim.grid import omniscient_cost
from spot_workflows.sim.pool import simulate_pool
from spot_workflows.sim.pool_baselines import OURS, RR_UP, UP_OR, _driver

H = 3600.0
SPOT, OD = 0.9731, 3.06


def hourly(name, data):
    return trace_from_data(name, H, data)


def policy(work_h, deadline_h, restart_h):
    return SpotPolicy(
        strategy="deadline",
        deadline_s=deadline_h * H,
        work_s=work_h * H,
        restart_overhead_s=restart_h * H,
        spot_usd_per_hour=SPOT,
        on_demand_usd_per_hour=OD,
        max_attempts=200,
    )


def bound(traces, work_h, deadline_h, restart_h):
    return clairvoyant_cost(
        traces,
        0,
        policy(work_h, deadline_h, restart_h),
        work_s=work_h * H,
        restart_overhead_s=restart_h * H,
    )


def test_restart_progress_spreads_a_long_overhead_over_ticks():
    assert restart_progress(600, 180) == [420]
    assert restart_progress(600, 720) == [0, 480]
    assert restart_progress(600, 0) == [600]
    assert restart_progress(600, 1200) == [0, 0]  # the second tick pays the last 600 s


@pytest.mark.parametrize(
    ("spot", "expected"),
    [
        ([1] * 6, 3 * SPOT),  # 0.5 h restart, then 1 h + 0.5 h of work: three ticks on spot
        ([0] * 6, 3 * OD),  # the same three ticks on on-demand
    ],
)
def test_one_placement_pays_its_restart(spot, expected):
    assert bound([hourly("a", spot)], 2, 5, 0.5) == pytest.approx(expected)


def test_moving_to_the_other_placement_pays_a_second_restart():
    a = hourly("a", [1, 1, 0, 0, 0, 0, 0])
    b = hourly("b", [0, 0, 1, 1, 1, 1, 1])
    # a: 0.5 + 1 h, then b: 0.5 + 1 h: four spot ticks, cheaper than any on-demand tick
    assert bound([a, b], 3, 5, 0.5) == pytest.approx(4 * SPOT)
    # without b, on-demand finishes: two spot ticks, then a restart on on-demand and one hour
    assert bound([a], 3, 5, 0.5) == pytest.approx(2 * SPOT + 2 * OD)
    # no restart overhead: three spot ticks
    assert bound([a, b], 3, 5, 0.0) == pytest.approx(3 * SPOT)


def test_it_waits_for_spot_when_the_deadline_allows():
    a = hourly("a", [0, 0, 0, 1, 1, 1, 1, 1])
    assert bound([a], 2, 6, 0.5) == pytest.approx(3 * SPOT)
    # one hour less: waiting no longer fits; the cheapest is on-demand, then spot at tick 3
    tight = bound([a], 2, 5, 0.5)
    assert 3 * SPOT < tight <= 3 * OD


def test_an_infeasible_deadline_is_infinite():
    assert bound([hourly("a", [1] * 8)], 5, 5, 0.5) == math.inf


def test_bad_input_is_refused():
    a = hourly("a", [1] * 8)
    with pytest.raises(ConfigError, match="whole seconds"):
        clairvoyant_cost([a], 0, policy(2, 5, 0.5), work_s=2 * H, restart_overhead_s=0.25)
    with pytest.raises(ConfigError, match="deadline_s"):
        clairvoyant_cost([a], 0, SpotPolicy(), work_s=2 * H, restart_overhead_s=0)
    with pytest.raises(ConfigError, match="past the end"):
        clairvoyant_cost([a], 5, policy(2, 5, 0.5), work_s=2 * H, restart_overhead_s=0)


@pytest.mark.parametrize("restart_h", [0.05, 0.2])
def test_no_policy_beats_it_and_it_pays_for_restarts(restart_h):
    pair = [load_trace(f"aws-10-26-2022/us-west-2{z}_v100_8") for z in "ab"]
    cell = Cell(48.0, 52.0, restart_h, 60)
    either = trace_from_data(
        "either",
        pair[0].gap_s,
        [int(a or b) for a, b in zip(*(t.available for t in pair), strict=True)],
    )
    for start in pair[0].starts(52.0, 60)[::20]:
        best = clairvoyant_cost(
            pair, start, cell.policy("auto"), work_s=48 * H, restart_overhead_s=restart_h * H
        )
        assert omniscient_cost(either, start, cell) <= best + 1e-9
        for name in (OURS, RR_UP, UP_OR):
            result = simulate_pool(
                pair,
                start,
                cell.policy("auto" if name == OURS else "uniform_progress"),
                work_s=48 * H,
                restart_overhead_s=restart_h * H,
                driver=_driver(name, pair),
            )
            assert best <= result.cost_usd + 1e-9, (name, start)
