"""AWS Batch placements: job queues in one or several regions, and the job ids that name them.

A job in the backend's home region keeps its plain Batch job id (as with one queue per
capacity); a job in another region is named by its job ARN (``arn:aws:batch:REGION:ACCOUNT:
job/ID``), which carries the region, so ``describe``/``cancel`` need only the id. Pure: no boto3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from spot_workflows.core.cost import PriceCatalog
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement, by_name, check_placements, of_capacity
from spot_workflows.errors import ConfigError

_JOB_ARN = re.compile(r"^arn:aws[\w-]*:batch:(?P<region>[a-z0-9-]+):\d*:job/(?P<id>[^/]+)$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SPOT_NAME, ON_DEMAND_NAME = "spot", "on-demand"


def placements_of(
    *,
    placements: Sequence[Placement | dict] | None,
    spot_queue: str | None,
    on_demand_queue: str | None,
) -> tuple[Placement, ...]:
    """The backend's placements: ``placements``, else the two queues as two placements
    (``spot`` and ``on-demand``). Raises a one-line ConfigError that says what to fix."""
    if placements is None:
        if not spot_queue or not on_demand_queue:
            raise ConfigError(
                "AwsBatchBackend needs spot_queue and on_demand_queue (names or ARNs), or "
                "placements"
            )
        return (
            Placement(name=SPOT_NAME, capacity=Capacity.SPOT, queue=spot_queue),
            Placement(name=ON_DEMAND_NAME, capacity=Capacity.ON_DEMAND, queue=on_demand_queue),
        )
    if spot_queue or on_demand_queue:
        raise ConfigError(
            "AwsBatchBackend takes placements or spot_queue/on_demand_queue, not both: move "
            "the queues into placements"
        )
    checked = check_placements(placements, what="placements")
    for p in checked:
        if not p.queue:
            raise ConfigError(
                f"placements: placement {p.name!r} names no queue: set its queue to the job "
                "queue's name or ARN"
            )
        if p.region is not None and not _REGION.match(p.region):
            raise ConfigError(
                f"placements: placement {p.name!r} has region {p.region!r}, not an AWS region "
                "name: use one like us-east-1"
            )
    for capacity in Capacity:
        if not of_capacity(checked, capacity):
            raise ConfigError(
                f"placements: AWS Batch needs at least one {capacity.value} placement; add one "
                f"with capacity {capacity.value!r}"
            )
    return checked


def region_of(placement: Placement, home: str) -> str:
    """The placement's region: its own, else the region of a queue ARN, else ``home``."""
    if placement.region:
        return placement.region
    queue = placement.queue or ""
    if queue.startswith("arn:"):
        return queue.split(":")[3] or home
    return home


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


def split_job_id(job_id: str, home: str) -> tuple[str, str]:
    """``(region, Batch job id)`` of an id this backend returned."""
    m = _JOB_ARN.match(job_id)
    return (m["region"], m["id"]) if m else (home, job_id)


def job_ref(job_id: str, arn: str | None, region: str, home: str) -> str:
    """The id the backend returns for a job: the plain id at home, else the job ARN."""
    if region == home:
        return job_id
    return arn if arn and _JOB_ARN.match(arn) else f"arn:aws:batch:{region}::job/{job_id}"


def by_region(job_ids: Iterable[str], home: str) -> dict[str, dict[str, list[str]]]:
    """region -> Batch job id -> the ids the caller gave for it."""
    out: dict[str, dict[str, list[str]]] = {}
    for given in dict.fromkeys(j for j in job_ids if j):
        region, plain = split_job_id(given, home)
        out.setdefault(region, {}).setdefault(plain, []).append(given)
    return out


def queues_by_region(placements: Sequence[Placement], home: str) -> dict[str, dict[str, str]]:
    """region -> queue -> the placement name (first one naming it)."""
    out: dict[str, dict[str, str]] = {}
    for p in placements:
        out.setdefault(region_of(p, home), {}).setdefault(p.queue or "", p.name)
    return out


def missing_queues(queues: Mapping[str, str], found: Sequence[Mapping]) -> list[str]:
    """The queues (names or ARNs) of ``queues`` that DescribeJobQueues did not return."""
    known = {q.get("jobQueueName") for q in found} | {q.get("jobQueueArn") for q in found}
    return [q for q in queues if q not in known]


def price_per_hour(
    placement: Placement,
    *,
    instance_type: str | None,
    home: str,
    catalog: PriceCatalog | None,
) -> float | None:
    """USD per hour on ``placement``: its ``usd_per_hour``, else the catalog's price of
    ``instance_type`` in its region for its capacity (None when unknown)."""
    if placement.usd_per_hour is not None:
        return placement.usd_per_hour
    if catalog is None or not instance_type:
        return None
    price = catalog.find("aws", instance_type, region_of(placement, home))
    return catalog.hourly(price, placement.capacity) if price is not None else None
