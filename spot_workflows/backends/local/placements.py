"""The local backend's placements: named markets of a step, and the market spec of each.

Each SPOT placement is its own market of the step; ON_DEMAND placements are never reclaimed.
:func:`local_placements` turns :class:`~spot_workflows.backends.local.LocalBackend`'s
``placements`` and ``markets`` arguments into checked placements and a market spec per SPOT
placement; :func:`pick_placement` chooses the placement an attempt is submitted to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from spot_workflows.backends.local.market import SpotMarket, market_from_spec, market_spec
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement, by_name, check_placements, of_capacity
from spot_workflows.errors import ConfigError

DEFAULT_SPOT, DEFAULT_ON_DEMAND = "spot", "on-demand"


def pick_placement(
    placements: Sequence[Placement], capacity: Capacity, name: str | None = None
) -> Placement:
    """The placement ``name`` of ``capacity`` (None: the first of that capacity)."""
    capacity = Capacity(capacity)
    if name is None:
        return of_capacity(placements, capacity)[0]
    found = by_name(placements, name)
    if found is None or found.capacity is not capacity:
        names = ", ".join(p.name for p in of_capacity(placements, capacity))
        raise ConfigError(
            f"placement {name!r} is not a {capacity.value} placement of this local backend: "
            f"use one of {names}"
        )
    return found


def local_placements(
    given: Sequence[Placement | Mapping] | None,
    markets: Mapping[str, SpotMarket | Mapping | None] | None,
    default_spec: dict,
) -> tuple[tuple[Placement, ...], dict[str, dict]]:
    """(placements, market spec per SPOT placement) from the constructor's arguments."""
    if given is None:
        if markets:
            raise ConfigError("markets names markets of placements: pass placements too")
        given = [
            Placement(name=DEFAULT_SPOT),
            Placement(name=DEFAULT_ON_DEMAND, capacity="ON_DEMAND"),
        ]
    items: list[Placement] = []
    inline: dict[str, object] = {}
    for p in given:
        if isinstance(p, Mapping):
            fields = dict(p)
            market = fields.pop("market", None)
            p = check_placements([fields], what="local placements")[0]
            if market is not None:
                inline[p.name] = market
        items.append(p)
    if items and not of_capacity(items, Capacity.ON_DEMAND):
        items.append(Placement(name=DEFAULT_ON_DEMAND, capacity=Capacity.ON_DEMAND))
    if items and not of_capacity(items, Capacity.SPOT):
        items.insert(0, Placement(name=DEFAULT_SPOT))
    placements = check_placements(items, what="local placements")
    spot = [p.name for p in of_capacity(placements, Capacity.SPOT)]
    chosen = {**inline, **dict(markets or {})}
    unknown = sorted(set(chosen) - set(spot))
    if unknown:
        raise ConfigError(
            f"markets: {', '.join(map(repr, unknown))} is not a SPOT placement; name one of "
            f"{', '.join(spot)}"
        )
    specs = {}
    for name in spot:
        m = chosen.get(name)
        if m is None:
            specs[name] = default_spec
        elif isinstance(m, Mapping):
            market_from_spec(dict(m))  # a malformed spec fails here, before anything runs
            specs[name] = dict(m)
        else:
            specs[name] = market_spec(m)  # type: ignore[arg-type]
    return placements, specs
