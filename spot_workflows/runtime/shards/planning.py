"""Shard planning for ETL preprocessing and batch inference: pure functions, no I/O.

A dataset is split into **shards** (row ranges, files, or a user-given list of items); every
shard has a stable id derived from what it covers, so every worker, every attempt and every
orchestrator retry computes the same plan. The durable side (who committed what) lives in
:mod:`spot_workflows.runtime.shards.ledger`; workers in :mod:`~spot_workflows.runtime.shards.worker`;
static partitioning and the SQS work queue in :mod:`~spot_workflows.runtime.shards.queue`.

Ids use ``[a-z0-9._-]`` only, so they are safe as object names on every store.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from spot_workflows.errors import ConfigError

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
MAX_SLUG = 40


class ShardKind(StrEnum):
    ROWS = "rows"  # rows [start, stop) of one logical table
    FILE = "file"  # one input file (``key`` = its path); start/stop = its rows when known
    ITEM = "item"  # one entry of a user-given list (``key`` = the item)


@dataclass(frozen=True)
class Shard:
    """One unit of work. ``rows`` is known for row ranges (and files planned with row counts)."""

    id: str
    index: int
    kind: ShardKind
    key: str | None = None
    start: int | None = None
    stop: int | None = None

    @property
    def rows(self) -> int | None:
        if self.start is None or self.stop is None:
            return None
        return self.stop - self.start

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, doc: Mapping) -> Shard:
        return cls(
            id=str(doc["id"]),
            index=int(doc["index"]),
            kind=ShardKind(doc["kind"]),
            key=doc.get("key"),
            start=doc.get("start"),
            stop=doc.get("stop"),
        )


def slug(text: str) -> str:
    """A short lowercase ``[a-z0-9._-]`` rendering of ``text`` (for readable ids)."""
    out = _UNSAFE.sub("-", text.lower()).strip("-.")
    return out[-MAX_SLUG:].lstrip("-.") or "x"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def plan_row_ranges(total_rows: int, rows_per_shard: int) -> list[Shard]:
    """Rows ``[0, total_rows)`` cut into consecutive ranges of ``rows_per_shard`` (last: rest)."""
    for name, value in (("total_rows", total_rows), ("rows_per_shard", rows_per_shard)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if total_rows < 0 or rows_per_shard < 1:
        raise ConfigError(
            f"need total_rows >= 0 and rows_per_shard >= 1, got {total_rows} and {rows_per_shard}"
        )
    width = max(6, len(str(total_rows)))
    return [
        Shard(
            id=f"r{start:0{width}d}-{min(start + rows_per_shard, total_rows):0{width}d}",
            index=i,
            kind=ShardKind.ROWS,
            start=start,
            stop=min(start + rows_per_shard, total_rows),
        )
        for i, start in enumerate(range(0, total_rows, rows_per_shard))
    ]


def plan_files(paths: Iterable[str], *, rows: Mapping[str, int] | None = None) -> list[Shard]:
    """One shard per input file, in sorted path order; ``rows`` (path -> row count) is optional
    and lets progress weigh shards by rows and lets the worker estimate time to finish."""
    unique = sorted({str(p) for p in paths})
    if not unique:
        raise ConfigError("plan_files needs at least one input path")
    out = []
    for i, path in enumerate(unique):
        n = None if rows is None else rows.get(path)
        out.append(
            Shard(
                id=f"f-{slug(path.rsplit('/', 1)[-1])}-{_short_hash(path)}",
                index=i,
                kind=ShardKind.FILE,
                key=path,
                start=None if n is None else 0,
                stop=n,
            )
        )
    return out


def plan_items(items: Sequence[str]) -> list[Shard]:
    """One shard per item of a user-given list (e.g. prompt files, table partitions), in order."""
    items = [str(x) for x in items]
    if len(set(items)) != len(items):
        dupes = sorted({x for x in items if items.count(x) > 1})
        raise ConfigError(f"shard items must be unique; repeated: {dupes[:5]}")
    return [
        Shard(
            id=f"i{i:06d}-{slug(item)}-{_short_hash(item)}", index=i, kind=ShardKind.ITEM, key=item
        )
        for i, item in enumerate(items)
    ]


def plan_digest(shards: Sequence[Shard]) -> str:
    """sha256 of the plan: workers on the same ledger must agree on it."""
    body = json.dumps([s.to_dict() for s in shards], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def check_plan(shards: Sequence[Shard]) -> None:
    """Ids unique and safe, indexes 0..n-1 in order; raise :class:`ConfigError` otherwise."""
    seen: set[str] = set()
    for i, s in enumerate(shards):
        if s.index != i:
            raise ConfigError(f"shard {s.id!r} has index {s.index}, expected {i}")
        if not s.id or _UNSAFE.search(s.id) or s.id.startswith("."):
            raise ConfigError(f"shard id {s.id!r} must use [a-z0-9._-] and not start with '.'")
        if s.id in seen:
            raise ConfigError(f"shard id {s.id!r} appears twice in the plan")
        seen.add(s.id)


def static_partition(shards: Sequence[Shard], index: int, count: int) -> list[Shard]:
    """The shards of array task ``index`` out of ``count`` (round-robin: uneven tails spread)."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"array index must be in [0, {count}) with count >= 1, got {index}")
    return [s for s in shards if s.index % count == index]


def pending(shards: Sequence[Shard], done: Collection[str], skip: Collection[str] = ()) -> list:
    """Shards not committed (``done``) and not given up on (``skip``), in plan order."""
    return [s for s in shards if s.id not in done and s.id not in skip]


def progress_fraction(shards: Sequence[Shard], done: Collection[str]) -> float:
    """Fraction of the work committed: weighted by rows when every shard's rows are known."""
    if not shards:
        return 1.0
    sizes = [s.rows for s in shards]
    if all(n is not None for n in sizes) and sum(sizes) > 0:  # type: ignore[arg-type]
        total = sum(sizes)  # type: ignore[arg-type]
        return sum(s.rows for s in shards if s.id in done) / total  # type: ignore[misc]
    return sum(1 for s in shards if s.id in done) / len(shards)


def can_finish(
    *,
    rows_left: int | None,
    seconds_per_row: float | None,
    expected_shard_s: float | None,
    elapsed_in_shard_s: float,
    commit_s: float,
    time_left_s: float,
    safety: float = 1.5,
) -> bool:
    """Whether the in-flight shard can still be finished and committed before the deadline.

    Uses the rows left at the measured rate when the shard's size is known, else the typical
    shard duration seen so far; with neither, it says no (checkpoint inside the shard instead).
    """
    if rows_left is not None and seconds_per_row is not None:
        needed = rows_left * seconds_per_row
    elif expected_shard_s is not None:
        needed = max(0.0, expected_shard_s - elapsed_in_shard_s)
    else:
        return False
    return (needed + commit_s) * safety <= time_left_s


# -- records (stored as JSON by the ledger) ---------------------------------------------------


class DoneRecord(BaseModel):
    """``shards/done/<id>.json``: the commit marker of one shard. Written once, never replaced."""

    model_config = ConfigDict(frozen=True)

    shard: str
    object: str  # output object, relative to the store root
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str
    worker: str
    attempt: int | None = None
    committed_at: float


class FailureRecord(BaseModel):
    """``shards/failed/<id>/<n>.json``: one application error on a shard."""

    model_config = ConfigDict(frozen=True)

    shard: str
    worker: str
    error: str
    at: float
    final: bool = False  # this failure used up the shard's attempts: it is dead


class Partial(BaseModel):
    """``shards/partial/<id>.json``: rows ``[0, rows)`` of a shard are processed, in ``parts``."""

    model_config = ConfigDict(frozen=True)

    shard: str
    rows: int = Field(ge=0)
    parts: list[PartRef] = Field(default_factory=list)
    worker: str
    saved_at: float


class PartRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    object: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str


Partial.model_rebuild()
