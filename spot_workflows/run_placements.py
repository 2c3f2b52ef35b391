"""Which placements the pool planner works with for a step, and at what price."""

from __future__ import annotations

import inspect
import logging

from spot_workflows.backends.base import Backend
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

log = logging.getLogger("spot_workflows.runner")


def pool_placements(backend: Backend, spec: StepSpec) -> tuple[Placement, ...]:
    """The backend's placements when the pool planner drives the step: several SPOT
    placements (racing), placements the user named, or a backend without a market view (the
    clouds: a pending SPOT probe beside an on-demand attempt is how spot is seen coming back).
    Empty: the single-placement planner (the local spot cloud's default market, whose
    availability the backend tells directly)."""
    placements = tuple(getattr(backend, "placements", None) or ())
    spot = [p for p in placements if p.capacity is Capacity.SPOT]
    market_view = callable(getattr(backend, "spot_available", None))
    named = bool(getattr(backend, "named_placements", False))
    if not placements or (market_view and not named and len(spot) <= 1):
        return ()
    return _priced(backend, spec, placements)


def _priced(
    backend: Backend, spec: StepSpec, placements: tuple[Placement, ...]
) -> tuple[Placement, ...]:
    """Each placement with a price: its own ``usd_per_hour``, else the price catalog's for the
    step's first instance type in its region (AWS, GCP), else none (the policy's price for its
    capacity applies)."""
    lookup = getattr(backend, "price_per_hour", None)
    if not placements or not callable(lookup) or not spec.instance_types:
        return placements
    if all(p.usd_per_hour is not None for p in placements):
        return placements
    from spot_workflows.pricing import load_catalog

    try:
        catalog = load_catalog()
    except ConfigError as exc:  # prices are a preference, never a reason to fail the step
        log.warning("%s: no price catalog (%s); placements ranked by your order", spec.key, exc)
        return placements
    live = getattr(backend, "price_catalog", None)  # current spot prices, where enabled
    if callable(live):
        catalog = live(spec, catalog)
    kind = "machine_type" if "machine_type" in inspect.signature(lookup).parameters else None
    priced = []
    for p in placements:
        price = p.usd_per_hour
        if price is None:
            kw = {kind or "instance_type": spec.instance_types[0]}
            price = lookup(p.name, catalog=catalog, **kw)
        priced.append(p if price is None else p.model_copy(update={"usd_per_hour": price}))
    return tuple(priced)


SCORES_TTL_S = 900.0
"""How long spot placement scores are reused before they are asked for again."""


class PlacementScores:
    """The backend's spot placement scores for a step (where it has them and the user enabled
    them), asked for at most every ``SCORES_TTL_S`` seconds."""

    def __init__(self, backend: Backend, spec: StepSpec) -> None:
        self._fetch = getattr(backend, "spot_placement_scores", None)
        self._spec = spec
        self._scores: dict[str, float] | None = None
        self._at: float | None = None

    def at(self, now: float) -> dict[str, float] | None:
        if not callable(self._fetch):
            return None
        if self._at is None or now - self._at >= SCORES_TTL_S:
            self._scores, self._at = self._fetch(self._spec), now
        return self._scores or None
