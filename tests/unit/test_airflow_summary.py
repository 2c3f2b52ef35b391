"""The Airflow XCom summary carries the same cost numbers as `spot-workflows report`."""

import pytest

from spot_workflows.airflow.steps import step_summary
from spot_workflows.config import StepSpec
from spot_workflows.core.cost import step_cost
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Decision, Outcome
from spot_workflows.pricing import load_catalog
from spot_workflows.report import summary

H = 3600.0


def attempt(n, cap, outcome, itype="local"):
    return Attempt(
        number=n,
        capacity=cap,
        job_name=f"k-a{n}",
        job_id=f"j{n}",
        backend="local",
        state=AttemptState.DONE,
        outcome=outcome,
        instance_type=itype,
        submitted_at=n * H,
        started_at=n * H,
        ended_at=n * H + H,
    )


def test_xcom_summary_cost_is_the_report_cost():
    spec = StepSpec(key="k", command=["true"], checkpoint_uri="file:///tmp/k")
    attempts = [
        attempt(1, Capacity.SPOT, Outcome.PREEMPTED),
        attempt(2, Capacity.ON_DEMAND, Outcome.SUCCEEDED),
    ]
    out = step_summary(
        spec=spec,
        attempts=attempts,
        decision=Decision.succeed(),
        backend="local",
        conn_id="spot_local_default",
        console_url=None,
    )
    expected = summary(step_cost("k", attempts, load_catalog(), now=0))
    assert out["cost"] == expected
    assert out["cost_usd"] == pytest.approx(0.9731 + 3.06, abs=1e-4)


def test_unpriced_instance_type_gives_no_total_and_says_why():
    spec = StepSpec(key="k", command=["true"], checkpoint_uri="file:///tmp/k")
    attempts = [attempt(1, Capacity.SPOT, Outcome.SUCCEEDED, itype="x9.mega")]
    out = step_summary(
        spec=spec,
        attempts=attempts,
        decision=Decision.succeed(),
        backend="local",
        conn_id="c",
        console_url=None,
    )
    assert out["cost_usd"] is None
    assert out["cost"]["unpriced"] == ["attempt 1: local x9.mega SPOT"]
