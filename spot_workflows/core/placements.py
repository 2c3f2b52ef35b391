"""Placements: the places a step may run on one capacity (AWS job queues, possibly in several
regions; GCP regions with their zones; markets of the local spot cloud).

A step lists several SPOT placements and several ON_DEMAND placements. While it waits for spot
it may keep a pending attempt in several SPOT placements at once (a pending Batch job costs
nothing and starts by itself when capacity appears): the first to start wins, the others are
cancelled and recorded ``RACED``. One model for every backend and both engines: the backends'
settings, the Airflow connection and the Prefect block all hold a list of these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, field_validator

from spot_workflows.core.outcomes import Capacity
from spot_workflows.errors import ConfigError
from spot_workflows.validation import Amount, Checked, problem

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_NAME_RULE = "1-128 letters, digits and . _ : / -, starting with a letter or digit"


class Placement(Checked):
    """One place to run a step on one capacity.

    ``name`` identifies it within the step (the ledger records it per attempt); the backend reads
    the fields it knows: AWS ``queue`` (job queue name or ARN) and ``region``; GCP ``region`` and
    ``zones``; the local spot cloud uses ``name`` as the market. ``usd_per_hour`` overrides the
    price the backend's catalog gives for this placement.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _what: ClassVar[str] = "placement"

    name: str
    capacity: Capacity = Capacity.SPOT
    region: str | None = None
    zones: tuple[str, ...] = ()
    queue: str | None = None
    usd_per_hour: Annotated[Amount, Field(gt=0)] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise problem(f"placement name {v!r} is not valid: use {_NAME_RULE}")
        return v

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not z or not z.strip() for z in v):
            raise problem("zones must be non-empty zone names (e.g. us-central1-a)")
        if len(set(v)) != len(v):
            raise problem(f"zones {list(v)} name a zone twice")
        return v


def check_placements(
    placements: Iterable[Placement | dict], *, what: str = "placements"
) -> tuple[Placement, ...]:
    """Validate a step's placement list: not empty, names unique, no two placements the same
    place. Dicts are read as :class:`Placement`. Raises a one-line
    :class:`~spot_workflows.errors.ConfigError` that says what to fix."""
    items = tuple(
        p if isinstance(p, Placement) else Placement.model_validate(p) for p in placements
    )
    if not items:
        raise ConfigError(f"{what}: the list is empty; name at least one placement")
    seen: dict[str, Placement] = {}
    places: dict[tuple, str] = {}
    for p in items:
        if p.name in seen:
            raise ConfigError(
                f"{what}: placement name {p.name!r} appears twice; names must be unique"
            )
        seen[p.name] = p
        place = (p.capacity, p.region, p.queue, tuple(sorted(p.zones)))
        if (p.region, p.queue, p.zones) != (None, None, ()) and place in places:
            raise ConfigError(
                f"{what}: placements {places[place]!r} and {p.name!r} are the same place "
                f"({p.capacity.value}, region {p.region}, queue {p.queue}, zones {list(p.zones)}); "
                "list each place once"
            )
        places[place] = p.name
    return items


def of_capacity(placements: Sequence[Placement], capacity: Capacity) -> tuple[Placement, ...]:
    """The placements of one capacity, in the user's order."""
    return tuple(p for p in placements if p.capacity is capacity)


def by_name(placements: Sequence[Placement], name: str | None) -> Placement | None:
    return next((p for p in placements if p.name == name), None)
