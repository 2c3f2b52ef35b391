"""A markdown artifact per step: its attempt ledger and the cost estimate.

Costs come from the same code as ``spot-workflows report`` (``spot_workflows.core.cost`` over the
dated price catalog, see docs/reporting.md): an instance type the catalog does not know is never
priced at zero; its attempt reads n/a and is listed as unpriced. The artifact key is derived from the step key (``spot-step-<slug>``), so every run of the same
step adds a version of one artifact and the Prefect UI shows its history.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from uuid import UUID

from prefect.artifacts import create_markdown_artifact

from spot_workflows.core.cost import StepCost, step_cost
from spot_workflows.core.outcomes import Attempt
from spot_workflows.core.summary import StepSummary
from spot_workflows.errors import ConfigError
from spot_workflows.pricing import load_catalog

log = logging.getLogger("spot_workflows.prefect")

COLUMNS = (
    "#",
    "capacity",
    "outcome",
    "job id",
    "instance",
    "zone",
    "resumed from step",
    "run s",
    "exit",
    "cost",
    "reason",
)
NA = "n/a"


def artifact_key(step_key: str) -> str:
    """Prefect artifact keys are lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9-]+", "-", step_key.lower()).strip("-")
    return f"spot-step-{slug}"[:200].rstrip("-")


def _cell(value: object, *, limit: int | None = 120) -> str:
    if value is None or value == "":
        return "–"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _usd(value: float | None) -> str:
    return NA if value is None else f"${value:.4f}"


def estimate_cost(
    *, step_key: str, attempts: Sequence[Attempt], now: float | None = None
) -> StepCost | None:
    """The step's cost from the price catalog (``$SPOT_WORKFLOWS_PRICES`` overrides it); None
    when the catalog cannot be loaded (the artifact then reads n/a rather than failing)."""
    try:
        catalog = load_catalog()
    except ConfigError as exc:
        log.warning("no cost estimate for %s: %s", step_key, exc)
        return None
    return step_cost(step_key, attempts, catalog, now=time.time() if now is None else now)


def cost_line(cost: StepCost | None) -> str:
    """One line: total, split, on-demand equivalent, savings, GPU-hours lost, what is unpriced."""
    if cost is None:
        return NA
    priced = any(a.cost_usd is not None for a in cost.attempts)
    if not priced:
        text = NA
    else:
        text = (
            f"{_usd(cost.total_usd)} (spot {_usd(cost.spot_usd)}, on-demand "
            f"{_usd(cost.on_demand_usd)}); on-demand equivalent "
            f"{_usd(cost.on_demand_equivalent_usd)}"
        )
        if cost.savings_pct is not None:
            text += f", savings {cost.savings_pct:.1f}%"
        text += f"; GPU-hours lost {cost.gpu_hours_lost:.4f}"
    if cost.unpriced:
        text += f"; unpriced (not counted): {'; '.join(cost.unpriced)}"
    return f"{text} (prices: {cost.catalog_snapshot})"


def ledger_markdown(
    *,
    step_key: str,
    checkpoint_uri: str,
    backend: str,
    attempts: Sequence[Attempt],
    status: str,
    cost: StepCost | None = None,
) -> str:
    steps = StepSummary.of(step_key, attempts)
    costs = {c.number: c.cost_usd for c in cost.attempts} if cost is not None else {}
    lines = [
        f"# Spot step `{step_key}`",
        "",
        f"**Status:** {_cell(status, limit=None)}  ",
        f"**Backend:** {backend}  ",
        f"**Checkpoints:** `{checkpoint_uri}`  ",
        f"**Attempts:** {len(attempts)}, preempted {steps.preemptions}, "
        f"escalated to on-demand: {'yes' if steps.escalated else 'no'}  ",
        f"**Estimated cost:** {_cell(cost_line(cost), limit=None)}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for a in attempts:
        row = (
            a.number,
            a.capacity.value,
            a.outcome.value if a.outcome else a.state.value,
            a.job_id,
            a.instance_type,
            a.zone,
            a.resumed_from_step,
            f"{a.run_seconds():.1f}",
            a.exit_code,
            _usd(costs.get(a.number)),
            a.reason,
        )
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if not attempts:
        lines.append("| " + " | ".join(["–"] * len(COLUMNS)) + " |")
    return "\n".join(lines) + "\n"


def publish_step_artifact(
    *, step_key: str, checkpoint_uri: str, backend: str, attempts: Sequence[Attempt], status: str
) -> UUID:
    """Create (a new version of) the step's markdown artifact; returns its id."""
    markdown = ledger_markdown(
        step_key=step_key,
        checkpoint_uri=checkpoint_uri,
        backend=backend,
        attempts=attempts,
        status=status,
        cost=estimate_cost(step_key=step_key, attempts=attempts),
    )
    return create_markdown_artifact(
        markdown=markdown,
        key=artifact_key(step_key),
        description=f"Attempt ledger and cost estimate of spot step {step_key}: {status}",
    )
