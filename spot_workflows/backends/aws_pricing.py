"""Current AWS spot prices from ``describe_spot_price_history``, as a price-catalog override.

Used by ``spot-workflows report --aws-spot-prices``: when credentials allow the call, the report
prices spot attempts at the market's current price (the mean of the newest price in each
availability zone of the region) instead of the snapshot's typical value. On-demand prices still
come from the snapshot; an instance type the snapshot does not know stays explicitly unpriced.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from spot_workflows.backends.aws_errors import AwsCaller, make_client
from spot_workflows.core.cost import Price, PriceCatalog


def latest_spot_prices(history: Sequence[dict]) -> dict[str, float]:
    """Instance type -> mean over zones of each zone's newest ``SpotPrice`` (pure)."""
    newest: dict[tuple[str, str], tuple[datetime, float]] = {}
    for item in history:
        try:
            key = (item["InstanceType"], item.get("AvailabilityZone", "?"))
            ts, price = item["Timestamp"], float(item["SpotPrice"])
        except (KeyError, TypeError, ValueError):
            continue
        if price > 0 and (key not in newest or ts > newest[key][0]):
            newest[key] = (ts, price)
    by_type: dict[str, list[float]] = {}
    for (itype, _zone), (_ts, price) in newest.items():
        by_type.setdefault(itype, []).append(price)
    return {t: sum(p) / len(p) for t, p in by_type.items()}


def spot_price_override(
    *,
    base: PriceCatalog,
    region: str,
    instance_types: Sequence[str],
    client: Any = None,
    endpoint_url: str | None = None,
    now: datetime | None = None,
) -> PriceCatalog:
    """A catalog override with the region's current spot price for each known instance type."""
    client = client or make_client("ec2", region=region, endpoint_url=endpoint_url)
    now = now or datetime.now(tz=UTC)
    call = AwsCaller(region=region)
    history: list[dict] = []
    params: dict[str, Any] = {
        "InstanceTypes": list(instance_types),
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": now - timedelta(hours=6),
        "MaxResults": 1000,
    }
    for _page in range(20):  # bounded pagination
        resp = call(client, "describe_spot_price_history", what="spot price history", **params)
        history.extend(resp.get("SpotPriceHistory", []))
        token = resp.get("NextToken")
        if not token:
            break
        params["NextToken"] = token
    entries = []
    for itype, spot in sorted(latest_spot_prices(history).items()):
        known = base.find("aws", itype, region)
        if known is not None:
            entries.append(known.model_copy(update={"region": region, "spot": spot}))
    return PriceCatalog(snapshot=f"aws spot {now:%Y-%m-%d %H:%M} UTC {region}", entries=entries)


__all__ = ["Price", "latest_spot_prices", "spot_price_override"]
