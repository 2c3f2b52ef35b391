"""Price lookup and cost arithmetic over a step's attempts. Pure: prices and times are passed in.

Definitions (docs/reporting.md says the same for users):

* **billed hours** of an attempt: from when it started running to when it ended (a live attempt:
  to ``now``). Time waiting for capacity is not billed; it is reported as ``capacity_wait_hours``.
* **lost hours**: work redone because of a reclaim: for a ``PREEMPTED`` attempt, the time between
  its newest checkpoint taken during the attempt and its end (all of it, if it never checkpointed).
* **on-demand equivalent**: what the useful work (billed minus lost hours) would have cost on
  on-demand: the cost of running the step once, uninterrupted, on on-demand.
* **savings**: ``1 - total / on_demand_equivalent`` (negative when spot cost more).

An instance type missing from the catalog is never priced at zero: its attempts are listed in
``unpriced`` and the money figures cover only what could be priced.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, Field

from spot_workflows.core.outcomes import Attempt, Capacity, Outcome


class Price(BaseModel):
    provider: str
    instance_type: str
    region: str | None = None
    gpus: int = Field(default=1, ge=0)
    gpu: str | None = None
    on_demand: float = Field(gt=0)
    spot: float | None = Field(default=None, gt=0)


class PriceCatalog(BaseModel):
    snapshot: str
    currency: str = "USD"
    note: str = ""
    entries: list[Price] = Field(default_factory=list)

    def find(self, provider: str, instance_type: str, region: str | None = None) -> Price | None:
        """Region-specific entry first, then a region-less one."""
        fallback = None
        for p in self.entries:
            if p.provider == provider and p.instance_type == instance_type:
                if region is not None and p.region == region:
                    return p
                if p.region is None and fallback is None:
                    fallback = p
        return fallback

    def hourly(self, price: Price, capacity: Capacity) -> float | None:
        return price.spot if capacity is Capacity.SPOT else price.on_demand

    def merged(self, override: PriceCatalog) -> PriceCatalog:
        """This catalog with ``override``'s entries taking precedence."""
        keys = {(p.provider, p.instance_type, p.region) for p in override.entries}
        kept = [p for p in self.entries if (p.provider, p.instance_type, p.region) not in keys]
        return PriceCatalog(
            snapshot=f"{self.snapshot} + override {override.snapshot}",
            currency=self.currency,
            note=self.note,
            entries=[*override.entries, *kept],
        )


def region_of(zone: str | None) -> str | None:
    """``us-east-1a`` -> ``us-east-1``; ``us-central1-a`` -> ``us-central1``; else None."""
    if not zone:
        return None
    m = re.match(r"^(.*\d)-?[a-z]$", zone)
    return m.group(1) if m else None


def provider_of(backend: str) -> str:
    """``aws-batch`` -> ``aws``, ``gcp-batch`` -> ``gcp``, ``local`` -> ``local``."""
    return backend.split("-", 1)[0].split("_", 1)[0].lower()


class AttemptCost(BaseModel):
    number: int
    capacity: Capacity
    outcome: Outcome | None
    instance_type: str | None
    zone: str | None
    gpus: int | None
    billed_hours: float
    lost_hours: float
    wait_hours: float
    hourly_usd: float | None
    cost_usd: float | None
    on_demand_hourly_usd: float | None


class CostTotals(BaseModel):
    """Money, GPU-hours and reclaims, for one step (:class:`StepCost`) or a run of steps."""

    total_usd: float
    on_demand_equivalent_usd: float
    savings_pct: float | None
    gpu_hours: float
    gpu_hours_lost: float
    capacity_wait_hours: float
    reclaims: int
    reclaims_by_zone: dict[str, int]
    reclaims_by_instance_type: dict[str, int]
    unpriced: list[str]
    catalog_snapshot: str


def savings_pct(total: float, equivalent: float) -> float | None:
    return (100.0 * (1 - total / equivalent)) if equivalent > 0 else None


class StepCost(CostTotals):
    step_key: str
    attempts: list[AttemptCost]
    spot_usd: float
    on_demand_usd: float


def billed_hours(a: Attempt, now: float) -> float:
    if a.started_at is None:
        return 0.0
    end = a.ended_at if a.ended_at is not None else now
    return max(0.0, end - a.started_at) / 3600.0


def lost_hours(a: Attempt, now: float) -> float:
    if a.outcome is not Outcome.PREEMPTED or a.started_at is None:
        return 0.0
    end = a.ended_at if a.ended_at is not None else now
    ckpt = a.last_checkpoint_at
    since = ckpt if ckpt is not None and ckpt >= a.started_at else a.started_at
    return max(0.0, end - min(since, end)) / 3600.0


def wait_hours(a: Attempt, now: float) -> float:
    start = a.started_at
    if start is None:
        start = a.ended_at if a.ended_at is not None else now
    return max(0.0, start - a.submitted_at) / 3600.0


def step_cost(
    step_key: str, attempts: Sequence[Attempt], catalog: PriceCatalog, *, now: float
) -> StepCost:
    rows: list[AttemptCost] = []
    unpriced: list[str] = []
    total = spot = od = equivalent = gpu_h = gpu_lost = wait = 0.0
    for a in attempts:
        price = (
            catalog.find(provider_of(a.backend), a.instance_type, region_of(a.zone))
            if a.instance_type
            else None
        )
        billed, lost = billed_hours(a, now), lost_hours(a, now)
        hourly = catalog.hourly(price, a.capacity) if price else None
        cost = None if hourly is None else billed * hourly
        gpus = price.gpus if price else None
        if billed > 0 and cost is None:
            unpriced.append(
                f"attempt {a.number}: {a.backend} {a.instance_type or 'unknown instance type'} "
                f"{a.capacity.value}"
            )
        if cost is not None:
            total += cost
            if a.capacity is Capacity.SPOT:
                spot += cost
            else:
                od += cost
            equivalent += (billed - lost) * price.on_demand
        gpu_h += billed * (gpus or 0)
        gpu_lost += lost * (gpus or 0)
        wait += wait_hours(a, now)
        rows.append(
            AttemptCost(
                number=a.number,
                capacity=a.capacity,
                outcome=a.outcome,
                instance_type=a.instance_type,
                zone=a.zone,
                gpus=gpus,
                billed_hours=billed,
                lost_hours=lost,
                wait_hours=wait_hours(a, now),
                hourly_usd=hourly,
                cost_usd=cost,
                on_demand_hourly_usd=price.on_demand if price else None,
            )
        )
    reclaimed = [a for a in attempts if a.outcome is Outcome.PREEMPTED]
    return StepCost(
        step_key=step_key,
        attempts=rows,
        total_usd=total,
        spot_usd=spot,
        on_demand_usd=od,
        on_demand_equivalent_usd=equivalent,
        savings_pct=savings_pct(total, equivalent),
        gpu_hours=gpu_h,
        gpu_hours_lost=gpu_lost,
        capacity_wait_hours=wait,
        reclaims=len(reclaimed),
        reclaims_by_zone=dict(Counter(a.zone or "unknown" for a in reclaimed)),
        reclaims_by_instance_type=dict(Counter(a.instance_type or "unknown" for a in reclaimed)),
        unpriced=unpriced,
        catalog_snapshot=catalog.snapshot,
    )
