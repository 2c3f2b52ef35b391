"""Current spot prices from describe_spot_price_history (moto server) as a catalog override."""

from datetime import UTC, datetime, timedelta

from spot_workflows.backends.aws_pricing import latest_spot_prices, spot_price_override
from spot_workflows.pricing import packaged_catalog


def test_latest_spot_prices_takes_each_zones_newest_and_averages():
    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    history = [
        {
            "InstanceType": "g5.xlarge",
            "AvailabilityZone": "a",
            "SpotPrice": "0.50",
            "Timestamp": t0,
        },
        {
            "InstanceType": "g5.xlarge",
            "AvailabilityZone": "a",
            "SpotPrice": "0.30",
            "Timestamp": t0 + timedelta(hours=1),
        },
        {
            "InstanceType": "g5.xlarge",
            "AvailabilityZone": "b",
            "SpotPrice": "0.40",
            "Timestamp": t0,
        },
        {
            "InstanceType": "g5.xlarge",
            "AvailabilityZone": "c",
            "SpotPrice": "junk",
            "Timestamp": t0,
        },
        {"bogus": True},
    ]
    assert latest_spot_prices(history) == {"g5.xlarge": 0.35}


def test_override_from_a_real_ec2_endpoint(moto):
    base = packaged_catalog()
    override = spot_price_override(
        base=base,
        region="us-east-1",
        instance_types=["g5.xlarge", "p3.2xlarge", "x9.unknown"],
        client=moto.client("ec2"),
    )
    assert override.snapshot.startswith("aws spot ")
    assert "g5.xlarge" in {e.instance_type for e in override.entries}  # moto serves its price
    for entry in override.entries:
        assert entry.provider == "aws" and entry.region == "us-east-1"
        assert entry.spot and entry.spot > 0
        assert entry.on_demand == base.find("aws", entry.instance_type).on_demand
    assert "x9.unknown" not in {e.instance_type for e in override.entries}
    merged = base.merged(override)
    for entry in override.entries:
        assert merged.find("aws", entry.instance_type, "us-east-1").spot == entry.spot


def test_the_iam_policy_allows_reading_spot_prices():
    from spot_workflows.backends.aws_iam import allows, iam_policy

    policy = iam_policy(region="us-east-1", account="123456789012")
    assert allows(policy, "ec2:DescribeSpotPriceHistory")
