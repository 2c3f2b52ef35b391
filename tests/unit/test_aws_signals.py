"""Spot placement scores to a score per placement: pure, table-driven."""

from __future__ import annotations

import pytest

from spot_workflows.backends.aws_signals import scores_by_placement
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement

PLACES = [
    Placement(name="east", queue="q-east"),  # the home region
    Placement(name="west", queue="q-west", region="us-west-2"),
    Placement(name="arn", queue="arn:aws:batch:eu-west-1:123456789012:job-queue/q"),
    Placement(name="od", queue="q-od", capacity=Capacity.ON_DEMAND),
]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], {}),
        (
            [{"Region": "us-east-1", "Score": 3}, {"Region": "us-west-2", "Score": 9}],
            {"east": 3.0, "west": 9.0},
        ),
        # several zones of one region: the region's best; a queue ARN names its region
        (
            [
                {"Region": "eu-west-1", "AvailabilityZoneId": "euw1-az1", "Score": 2},
                {"Region": "eu-west-1", "AvailabilityZoneId": "euw1-az2", "Score": 7},
            ],
            {"arn": 7.0},
        ),
        # malformed answers are skipped, never guessed
        (
            [
                {"Region": "us-east-1", "Score": 0},
                {"Region": "us-east-1", "Score": 11},
                {"Region": "us-east-1", "Score": True},
                {"Region": "us-east-1", "Score": "5"},
                {"Score": 5},
                {"Region": "us-west-2", "Score": 4},
            ],
            {"west": 4.0},
        ),
    ],
)
def test_scores_by_placement(items, expected):
    assert scores_by_placement(items, PLACES, "us-east-1") == expected
