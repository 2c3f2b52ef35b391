"""Checkpoint cadence: Young and Daly intervals, observed MTBF, the adaptive interval."""

from __future__ import annotations

import math

import pytest

from spot_workflows.core.cadence import (
    DEFAULT_MTBF_S,
    adaptive_interval,
    daly_interval,
    expected_wall_time,
    observed_mtbf,
    young_interval,
)
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome
from spot_workflows.errors import ConfigError


def test_young_and_daly_formulas():
    assert young_interval(60, 3600) == pytest.approx(math.sqrt(2 * 60 * 3600))
    x = 60 / 7200
    expected = math.sqrt(2 * 60 * 3600) * (1 + math.sqrt(x) / 3 + x / 9) - 60
    assert daly_interval(60, 3600) == pytest.approx(expected)
    assert daly_interval(60, 3600) < young_interval(60, 3600)
    assert daly_interval(10_000, 3000) == 3000  # save cost >= 2 MTBF: save every MTBF


@pytest.mark.parametrize("save,mtbf", [(10, 3600), (60, 7200), (300, 1800), (30, 24 * 3600)])
def test_daly_is_within_one_percent_of_the_optimum_of_its_wall_time(save, mtbf):
    work = 48 * 3600
    best = min(
        expected_wall_time(work, tau, save, mtbf, restart_s=120)
        for tau in (daly_interval(save, mtbf) * f / 100 for f in range(20, 500))
    )
    at_daly = expected_wall_time(work, daly_interval(save, mtbf), save, mtbf, restart_s=120)
    assert at_daly <= best * 1.01


def test_expected_wall_time_without_reclaims_tends_to_work_plus_saves():
    work, tau, save = 3600.0, 600.0, 10.0
    assert expected_wall_time(work, tau, save, 1e12) == pytest.approx(work + 6 * save, rel=1e-6)


def spot(n, start, end, outcome):
    return Attempt(
        number=n,
        capacity=Capacity.SPOT,
        job_name=f"a{n}",
        backend="t",
        state=AttemptState.DONE,
        outcome=outcome,
        submitted_at=start,
        started_at=start,
        ended_at=end,
    )


def test_observed_mtbf_is_spot_running_time_over_reclaims():
    attempts = [
        spot(1, 0, 1000, Outcome.PREEMPTED),
        spot(2, 1100, 4100, Outcome.PREEMPTED),
        spot(3, 5000, 7000, Outcome.SUCCEEDED),
    ]
    assert observed_mtbf(attempts, now=8000) == pytest.approx((1000 + 3000 + 2000) / 2)
    assert observed_mtbf(attempts[2:], now=8000) is None


def test_adaptive_interval_uses_daly_clamped():
    assert adaptive_interval(None, None, default_s=900) == 900
    assert adaptive_interval(60, 3600) == pytest.approx(daly_interval(60, 3600))
    assert adaptive_interval(60, None) == pytest.approx(daly_interval(60, DEFAULT_MTBF_S))
    assert adaptive_interval(0.001, 60, floor_s=30) == 30
    assert adaptive_interval(600, 1e9, ceiling_s=3600) == 3600


def test_invalid_inputs_say_what_is_wrong():
    with pytest.raises(ConfigError, match="must be > 0"):
        daly_interval(0, 3600)
    with pytest.raises(ConfigError, match="interval must be > 0"):
        expected_wall_time(3600, 0, 10, 3600)
