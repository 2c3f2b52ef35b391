"""Live signals for choosing among AWS spot placements, each off unless the user enables it:

* **current spot prices** (``live_spot_prices``): the newest ``DescribeSpotPriceHistory`` price of
  the step's instance type in each placement's region, in place of the price catalog's typical
  value;
* **spot placement scores** (``spot_placement_scores``): EC2 ``GetSpotPlacementScores`` (1-10 per
  region: how likely a request for the step's instance type succeeds there now); a placement gets
  its region's best score, and the pool planner weighs it with the price.

Either call failing (no ``ec2:`` permission, throttling) is logged and the step goes on without
that signal: these rank placements, they never decide whether the step runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from spot_workflows.backends.aws_errors import AwsCaller, make_client
from spot_workflows.backends.aws_placements import region_of
from spot_workflows.backends.aws_pricing import spot_price_override
from spot_workflows.core.cost import PriceCatalog
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement, of_capacity
from spot_workflows.errors import SpotWorkflowsError

log = logging.getLogger("spot_workflows.aws")


def scores_by_placement(
    items: Iterable[dict], placements: Sequence[Placement], home: str
) -> dict[str, float]:
    """Pure: ``GetSpotPlacementScores`` items (``{Region, AvailabilityZoneId, Score}``) to a
    score per SPOT placement name (its region's best); items without a valid 1-10 score are
    skipped."""
    best: dict[str, int] = {}
    for item in items:
        region, score = item.get("Region"), item.get("Score")
        if not isinstance(region, str) or isinstance(score, bool) or not isinstance(score, int):
            continue
        if 1 <= score <= 10:
            best[region] = max(score, best.get(region, 0))
    spot = of_capacity(placements, Capacity.SPOT)
    return {p.name: float(best[r]) for p in spot if (r := region_of(p, home)) in best}


def placement_scores(
    placements: Sequence[Placement],
    *,
    instance_types: Sequence[str],
    home: str,
    session: Any = None,
    endpoint_url: str | None = None,
    client: Any = None,
) -> dict[str, float]:
    """Scores of the SPOT placements for one instance of the step's instance types ({} when the
    call fails or the step names no instance type)."""
    regions = sorted({region_of(p, home) for p in of_capacity(placements, Capacity.SPOT)})
    if not instance_types or not regions:
        return {}
    client = client or make_client("ec2", session=session, region=home, endpoint_url=endpoint_url)
    try:
        resp = AwsCaller(region=home)(
            client,
            "get_spot_placement_scores",
            what="spot placement scores",
            InstanceTypes=list(instance_types),
            TargetCapacity=1,
            SingleAvailabilityZone=False,
            RegionNames=regions,
        )
    except SpotWorkflowsError as exc:
        log.warning("spot placement scores unavailable (%s); ranking placements by price", exc)
        return {}
    return scores_by_placement(resp.get("SpotPlacementScores", []), placements, home)


def live_price_catalog(
    base: PriceCatalog,
    placements: Sequence[Placement],
    *,
    instance_types: Sequence[str],
    home: str,
    session: Any = None,
    endpoint_url: str | None = None,
) -> PriceCatalog:
    """``base`` with the current spot price of each instance type in each SPOT placement's
    region on top (``base`` as it is for a region whose prices cannot be read)."""
    catalog = base
    for region in sorted({region_of(p, home) for p in of_capacity(placements, Capacity.SPOT)}):
        client = make_client("ec2", session=session, region=region, endpoint_url=endpoint_url)
        try:
            live = spot_price_override(
                base=base, region=region, instance_types=instance_types, client=client
            )
        except SpotWorkflowsError as exc:
            log.warning(
                "current spot prices in %s unavailable (%s); using the catalog", region, exc
            )
            continue
        catalog = catalog.merged(live)
    return catalog
