"""The checkpoint side of a step run: the newest checkpoint noted on an attempt when it ends
(lost-work accounting), and where an interrupted run will resume from."""

from __future__ import annotations

from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Attempt
from spot_workflows.errors import StepInterruptedError
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


def record_last_checkpoint(ledger: Ledger, store: CheckpointStore, attempt: Attempt) -> Attempt:
    """Note the newest durable checkpoint at the attempt's end (for lost-work accounting)."""
    latest = store.latest()
    if latest is None:
        return attempt
    return ledger.update(
        attempt,
        last_checkpoint_step=latest.step,
        last_checkpoint_at=latest.created_at,
        progress_end=latest.progress,
    )


def interrupted_error(
    spec: StepSpec, store: CheckpointStore, stopped: int | None
) -> StepInterruptedError:
    """The error an interrupted run raises: the attempt it stopped (``stopped``, its number; None
    when no attempt was running), where the newest checkpoint is, and how to resume."""
    latest = store.latest()
    where = (
        f"last checkpoint: step {latest.step} in {spec.checkpoint_uri}"
        if latest is not None
        else f"no checkpoint yet in {spec.checkpoint_uri}"
    )
    what = f"attempt {stopped} stopped" if stopped else "no attempt was running"
    return StepInterruptedError(
        f"interrupted: {what}; {where}; run the same command again to resume",
        step_key=spec.key,
    )
