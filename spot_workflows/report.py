"""Cost, savings and interruption reports built from attempt ledgers (the single source of
numbers for the CLI, the HTML report, the Airflow XCom summary and the Prefect artifact)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from pydantic import BaseModel

from spot_workflows.core.cost import CostTotals, PriceCatalog, StepCost, savings_pct, step_cost
from spot_workflows.core.outcomes import Attempt
from spot_workflows.errors import ConfigError, LedgerError
from spot_workflows.ledger import LEDGER_PATH, LedgerDoc
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


class CheckpointMark(BaseModel):
    step: int
    created_at: float
    emergency: bool = False


class StepReport(BaseModel):
    step_key: str
    checkpoint_uri: str
    cost: StepCost
    attempts: list[Attempt]
    checkpoints: list[CheckpointMark]


class RunReport(CostTotals):
    generated_at: float
    steps: list[StepReport]
    skipped: list[str] = []
    """Entries under a prefix that are not step directories (stray files), with why."""


def read_ledger(store: CheckpointStore) -> LedgerDoc | None:
    raw = store.read(LEDGER_PATH)
    if raw is None:
        return None
    try:
        return LedgerDoc.model_validate(json.loads(raw))
    except ValueError as exc:
        raise LedgerError(f"ledger {store.uri}/{LEDGER_PATH} is unreadable: {exc}") from exc


def find_step_stores(
    uri: str, storage_options: dict | None = None, *, skipped: list[str] | None = None
) -> list[CheckpointStore]:
    """``uri`` itself if it holds a ledger, else its immediate sub-prefixes that do. Entries
    that are not directories (a stray file) are skipped and, when ``skipped`` is given, listed
    there with why."""
    store = CheckpointStore(uri, storage_options=storage_options)
    if store.read(LEDGER_PATH) is not None:
        return [store]
    found = []
    try:
        children = sorted(store.fs.ls(store.root, detail=True), key=lambda e: e["name"])
    except (FileNotFoundError, NotADirectoryError):
        children = []
    scheme = uri.split("://", 1)[0]
    for entry in children:
        child = entry["name"]
        child_uri = f"{scheme}://{child}" if scheme != "file" else f"file://{child}"
        if entry.get("type") != "directory":
            if skipped is not None:
                skipped.append(f"{child_uri}: not a directory (a step is a directory)")
            continue
        try:
            sub = CheckpointStore(child_uri, storage_options=storage_options)
        except ConfigError as exc:  # a name no checkpoint URI may have (%, control characters)
            if skipped is not None:
                skipped.append(f"{child_uri}: {exc}")
            continue
        if sub.read(LEDGER_PATH) is not None:
            found.append(sub)
    if not found:
        raise LedgerError(
            f"no attempt ledger ({LEDGER_PATH}) at {uri} or directly under it; pass a step's "
            "checkpoint URI (or the prefix that holds several steps)"
        )
    return found


def _checkpoints(store: CheckpointStore) -> list[CheckpointMark]:
    marks = []
    for step in store.steps():
        raw = store.read(f"step-{step}/manifest.json")
        if raw is None:
            continue
        try:
            doc = json.loads(raw)
            marks.append(
                CheckpointMark(
                    step=doc["step"],
                    created_at=doc["created_at"],
                    emergency=bool(doc.get("metadata", {}).get("emergency")),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return marks


def step_report(
    store: CheckpointStore, catalog: PriceCatalog, *, now: float | None = None
) -> StepReport:
    doc = read_ledger(store)
    if doc is None:
        raise LedgerError(f"no attempt ledger at {store.uri}/{LEDGER_PATH}")
    now = time.time() if now is None else now
    return StepReport(
        step_key=doc.step_key,
        checkpoint_uri=store.uri,
        cost=step_cost(doc.step_key, doc.attempts, catalog, now=now),
        attempts=doc.attempts,
        checkpoints=_checkpoints(store),
    )


def run_report(
    uris: Iterable[str],
    catalog: PriceCatalog,
    *,
    now: float | None = None,
    storage_options: dict | None = None,
) -> RunReport:
    now = time.time() if now is None else now
    skipped: list[str] = []
    steps = [
        step_report(s, catalog, now=now)
        for uri in uris
        for s in find_step_stores(uri, storage_options, skipped=skipped)
    ]
    return combine(steps, catalog, now=now).model_copy(update={"skipped": skipped})


def combine(steps: Sequence[StepReport], catalog: PriceCatalog, *, now: float) -> RunReport:
    costs = [s.cost for s in steps]
    total = sum(c.total_usd for c in costs)
    equivalent = sum(c.on_demand_equivalent_usd for c in costs)
    zones: Counter[str] = Counter()
    types: Counter[str] = Counter()
    for c in costs:
        zones.update(c.reclaims_by_zone)
        types.update(c.reclaims_by_instance_type)
    return RunReport(
        generated_at=now,
        catalog_snapshot=catalog.snapshot,
        steps=list(steps),
        total_usd=total,
        on_demand_equivalent_usd=equivalent,
        savings_pct=savings_pct(total, equivalent),
        gpu_hours=sum(c.gpu_hours for c in costs),
        gpu_hours_lost=sum(c.gpu_hours_lost for c in costs),
        capacity_wait_hours=sum(c.capacity_wait_hours for c in costs),
        reclaims=sum(c.reclaims for c in costs),
        reclaims_by_zone=dict(zones),
        reclaims_by_instance_type=dict(types),
        unpriced=[u for c in costs for u in c.unpriced],
    )


def summary(cost: StepCost) -> dict:
    """The compact cost dict the Airflow XCom summary and the Prefect artifact embed."""
    return {
        "total_usd": round(cost.total_usd, 4),
        "spot_usd": round(cost.spot_usd, 4),
        "on_demand_usd": round(cost.on_demand_usd, 4),
        "on_demand_equivalent_usd": round(cost.on_demand_equivalent_usd, 4),
        "savings_pct": None if cost.savings_pct is None else round(cost.savings_pct, 1),
        "gpu_hours": round(cost.gpu_hours, 4),
        "gpu_hours_lost": round(cost.gpu_hours_lost, 4),
        "reclaims": cost.reclaims,
        "unpriced": cost.unpriced,
        "catalog_snapshot": cost.catalog_snapshot,
    }
