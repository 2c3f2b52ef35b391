"""Cost arithmetic on hand-computed ledgers (pure code, no fakes)."""

import json

import pytest

from spot_workflows.core.cost import PriceCatalog, provider_of, region_of, step_cost
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome
from spot_workflows.errors import ConfigError
from spot_workflows.pricing import load_catalog, load_catalog_file, packaged_catalog

H = 3600.0
CATALOG = PriceCatalog(
    snapshot="test",
    entries=[
        {"provider": "aws", "instance_type": "g5.xlarge", "gpus": 1, "on_demand": 1.0, "spot": 0.4},
        {
            "provider": "aws",
            "instance_type": "p3.8xlarge",
            "gpus": 4,
            "on_demand": 12.0,
            "spot": 3.6,
        },
        {
            "provider": "aws",
            "instance_type": "g5.xlarge",
            "region": "eu-west-1",
            "on_demand": 2.0,
            "spot": 0.5,
        },
    ],
)


def att(
    n, cap, outcome, *, submitted, started, ended, itype="g5.xlarge", zone="us-east-1a", ckpt=None
):
    return Attempt(
        number=n,
        capacity=cap,
        job_name=f"s-a{n}",
        job_id=f"j{n}",
        backend="aws-batch",
        state=AttemptState.DONE,
        outcome=outcome,
        instance_type=itype,
        zone=zone,
        submitted_at=submitted,
        started_at=started,
        ended_at=ended,
        last_checkpoint_at=ckpt,
    )


def test_two_reclaims_then_on_demand_hand_computed():
    attempts = [
        # 2 h on spot, last checkpoint 30 min before the reclaim -> 0.5 h lost
        att(
            1,
            Capacity.SPOT,
            Outcome.PREEMPTED,
            submitted=0,
            started=0.25 * H,
            ended=2.25 * H,
            ckpt=1.75 * H,
        ),
        # 1 h on spot, never checkpointed -> 1 h lost
        att(
            2,
            Capacity.SPOT,
            Outcome.PREEMPTED,
            submitted=2.25 * H,
            started=2.5 * H,
            ended=3.5 * H,
            zone="us-east-1b",
        ),
        # 1.5 h on demand
        att(
            3,
            Capacity.ON_DEMAND,
            Outcome.SUCCEEDED,
            submitted=3.5 * H,
            started=3.5 * H,
            ended=5 * H,
        ),
    ]
    c = step_cost("s", attempts, CATALOG, now=10 * H)
    assert c.spot_usd == pytest.approx(3 * 0.4)  # 3 spot hours at 0.40
    assert c.on_demand_usd == pytest.approx(1.5 * 1.0)
    assert c.total_usd == pytest.approx(2.7)
    assert c.gpu_hours == pytest.approx(4.5)
    assert c.gpu_hours_lost == pytest.approx(1.5)
    # useful hours: 4.5 - 1.5 = 3.0 at on-demand 1.0
    assert c.on_demand_equivalent_usd == pytest.approx(3.0)
    assert c.savings_pct == pytest.approx(10.0)
    assert c.capacity_wait_hours == pytest.approx(0.5)
    assert c.reclaims == 2
    assert c.reclaims_by_zone == {"us-east-1a": 1, "us-east-1b": 1}
    assert c.reclaims_by_instance_type == {"g5.xlarge": 2}
    assert c.unpriced == []


def test_multi_gpu_instance_counts_gpu_hours_and_region_specific_price():
    attempts = [
        att(
            1,
            Capacity.SPOT,
            Outcome.SUCCEEDED,
            submitted=0,
            started=0,
            ended=2 * H,
            itype="p3.8xlarge",
        ),
        att(
            2,
            Capacity.SPOT,
            Outcome.SUCCEEDED,
            submitted=0,
            started=0,
            ended=1 * H,
            zone="eu-west-1c",
        ),
    ]
    c = step_cost("s", attempts, CATALOG, now=0)
    assert c.gpu_hours == pytest.approx(2 * 4 + 1)
    assert c.total_usd == pytest.approx(2 * 3.6 + 1 * 0.5)  # eu-west-1 price for the second


def test_unknown_instance_type_is_marked_unpriced_never_zero():
    attempts = [
        att(1, Capacity.SPOT, Outcome.SUCCEEDED, submitted=0, started=0, ended=H, itype="x9.mega"),
        att(2, Capacity.SPOT, Outcome.SUCCEEDED, submitted=0, started=0, ended=H),
    ]
    c = step_cost("s", attempts, CATALOG, now=0)
    assert c.attempts[0].cost_usd is None and c.attempts[0].hourly_usd is None
    assert c.unpriced == ["attempt 1: aws-batch x9.mega SPOT"]
    assert c.total_usd == pytest.approx(0.4)  # only what could be priced


def test_live_attempt_is_billed_to_now_and_waiting_is_not_billed():
    live = Attempt(
        number=1,
        capacity=Capacity.SPOT,
        job_name="a",
        job_id="j",
        backend="aws-batch",
        state=AttemptState.RUNNING,
        instance_type="g5.xlarge",
        submitted_at=0,
        started_at=H,
    )
    c = step_cost("s", [live], CATALOG, now=3 * H)
    assert c.attempts[0].billed_hours == pytest.approx(2)
    assert c.capacity_wait_hours == pytest.approx(1)


def test_region_and_provider_helpers():
    assert region_of("us-east-1a") == "us-east-1"
    assert region_of("europe-west4-b") == "europe-west4"
    assert region_of("local") is None
    assert provider_of("aws-batch") == "aws" and provider_of("gcp-batch") == "gcp"


def test_packaged_catalog_prices_the_demo_and_common_gpus():
    cat = packaged_catalog()
    assert cat.find("local", "local").on_demand == 3.06
    assert cat.find("aws", "g5.xlarge").spot < cat.find("aws", "g5.xlarge").on_demand
    assert cat.find("gcp", "a2-highgpu-1g") is not None


def test_override_file_replaces_entries(tmp_path, monkeypatch):
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "snapshot": "mine",
                "entries": [
                    {"provider": "aws", "instance_type": "g5.xlarge", "on_demand": 9.0, "spot": 1.0}
                ],
            }
        )
    )
    assert load_catalog(f).find("aws", "g5.xlarge").on_demand == 9.0
    monkeypatch.setenv("SPOT_WORKFLOWS_PRICES", str(f))
    assert load_catalog().find("aws", "g5.xlarge").spot == 1.0


@pytest.mark.parametrize(
    "content,match",
    [
        ("not json", "not a price catalog"),
        (
            '{"snapshot": "x", "entries": [{"provider": "aws", "instance_type": "a", "on_demand": 0}]}',
            "not a price catalog",
        ),
    ],
)
def test_bad_override_file_says_what_to_fix(tmp_path, content, match):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_catalog_file(f)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_catalog_file(tmp_path / "missing.json")
