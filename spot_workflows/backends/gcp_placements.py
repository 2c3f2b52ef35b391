"""GCP Batch placements: regions, each with optional allowed zones (pure: no Google SDK)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement, by_name, check_placements, of_capacity
from spot_workflows.errors import ConfigError

_REGION = re.compile(r"^[a-z]+(?:-[a-z]+)+\d+$")


def pick(placements: Sequence[Placement], capacity: Capacity, name: str | None) -> Placement:
    """The placement to submit to: ``name``, else the first of ``capacity``."""
    if name is None:
        return of_capacity(placements, capacity)[0]
    found = by_name(placements, name)
    if found is None or found.capacity is not capacity:
        names = [p.name for p in of_capacity(placements, capacity)]
        raise ConfigError(
            f"placement {name!r} is not a {capacity.value} placement of this backend; "
            f"choose one of {names}"
        )
    return found


def gcp_placements(
    placements: Sequence[Placement | dict] | None, *, region: str, zones: tuple[str, ...]
) -> tuple[Placement, ...]:
    """The backend's placements: ``placements`` (checked: GCP regions, zones within them, a
    SPOT and a STANDARD one), else ``region``/``zones`` as one placement of each capacity."""
    if placements is None:
        return (
            Placement(name="spot", capacity=Capacity.SPOT, region=region, zones=zones),
            Placement(name="on-demand", capacity=Capacity.ON_DEMAND, region=region, zones=zones),
        )
    checked = check_placements(placements, what="placements")
    for p in checked:
        where = p.region or region
        if not _REGION.match(where):
            raise ConfigError(
                f"placements: placement {p.name!r} has region {where!r}: use a GCP region "
                "like 'us-central1'"
            )
        for zone in p.zones:
            if not zone.startswith(f"{where}-"):
                raise ConfigError(
                    f"placements: placement {p.name!r} lists zone {zone!r}, which is not in "
                    f"its region {where!r} (e.g. {where}-a)"
                )
    for capacity in Capacity:
        if not of_capacity(checked, capacity):
            raise ConfigError(
                f"placements: GCP Batch needs at least one {capacity.value} placement; add one "
                f"with capacity {capacity.value!r}"
            )
    return checked
