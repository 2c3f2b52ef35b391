"""The durable attempt ledger, stored next to the step's checkpoints.

Write-ahead: an attempt is recorded (with its deterministic job name) *before* it is submitted,
and its job id right after. Whoever runs the step next -- an Airflow retry, a Prefect retry, a
runner that crashed and came back -- reads the same ledger and re-attaches to the live attempt
(by job id, or by job name when the crash fell between the two writes) instead of submitting a
duplicate. Attempts are never removed; only their live fields are updated.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence

from pydantic import BaseModel, Field, ValidationError

from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Observation, Outcome
from spot_workflows.errors import LedgerError
from spot_workflows.runtime.store import CheckpointStore

LEDGER_PATH = "ledger.json"
_NAME_OK = re.compile(r"[^A-Za-z0-9-]+")


class LedgerDoc(BaseModel):
    format: int = 1
    step_key: str
    run_id: str = Field(default_factory=lambda: secrets.token_hex(3))
    attempts: list[Attempt] = Field(default_factory=list)


class Ledger:
    """Attempts of one step, persisted atomically after every change."""

    def __init__(self, store: CheckpointStore, doc: LedgerDoc) -> None:
        self.store = store
        self._doc = doc

    @classmethod
    def open(cls, store: CheckpointStore, step_key: str) -> Ledger:
        raw = store.read(LEDGER_PATH)
        if raw is None:
            return cls(store, LedgerDoc(step_key=step_key))
        try:
            doc = LedgerDoc.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise LedgerError(
                f"ledger {store.uri}/{LEDGER_PATH} is unreadable ({exc.__class__.__name__}: "
                f"{str(exc)[:200]}); move it aside to start the step afresh, or restore it from "
                "a backup -- spot-workflows will not guess which jobs are live"
            ) from exc
        if doc.step_key != step_key:
            raise LedgerError(
                f"ledger {store.uri}/{LEDGER_PATH} belongs to step {doc.step_key!r}, not "
                f"{step_key!r}; give each step its own checkpoint URI"
            )
        return cls(store, doc)

    # -- reading ---------------------------------------------------------------------------
    @property
    def step_key(self) -> str:
        return self._doc.step_key

    @property
    def attempts(self) -> Sequence[Attempt]:
        return tuple(self._doc.attempts)

    @property
    def live(self) -> Attempt | None:
        last = self._doc.attempts[-1] if self._doc.attempts else None
        return last if last is not None and last.live else None

    def job_name(self, number: int) -> str:
        """Readable, unique job name for attempt ``number``: carries the step key."""
        base = _NAME_OK.sub("-", self._doc.step_key).strip("-")[:80] or "step"
        return f"{base}-{self._doc.run_id}-a{number}"

    # -- writing ---------------------------------------------------------------------------
    def begin(
        self,
        *,
        capacity: Capacity,
        backend: str,
        now: float,
        resumed_from_step: int | None = None,
        progress: float | None = None,
    ) -> Attempt:
        """Record a new attempt before it is submitted (write-ahead)."""
        if self.live is not None:
            raise LedgerError(
                f"step {self.step_key!r} already has live attempt {self.live.number}; "
                "re-attach to it instead of submitting another"
            )
        number = len(self._doc.attempts) + 1
        attempt = Attempt(
            number=number,
            capacity=capacity,
            job_name=self.job_name(number),
            backend=backend,
            submitted_at=now,
            resumed_from_step=resumed_from_step,
            progress_start=progress,
        )
        self._doc.attempts.append(attempt)
        self._persist()
        return attempt

    def update(self, attempt: Attempt) -> Attempt:
        idx = attempt.number - 1
        if not 0 <= idx < len(self._doc.attempts):
            raise LedgerError(f"attempt {attempt.number} is not in the ledger of {self.step_key!r}")
        self._doc.attempts[idx] = attempt
        self._persist()
        return attempt

    def set_job_id(self, attempt: Attempt, job_id: str) -> Attempt:
        return self.update(attempt.model_copy(update={"job_id": job_id}))

    def observe(self, attempt: Attempt, obs: Observation) -> Attempt:
        """Fold a backend observation into the attempt (only fields that changed are written)."""
        update: dict = {"state": obs.state}
        for field in ("reason", "exit_code", "instance_id", "instance_type", "zone"):
            value = getattr(obs, field)
            if value is not None:
                update[field] = value
        if obs.started_at is not None and attempt.started_at is None:
            update["started_at"] = obs.started_at
        if obs.state is AttemptState.DONE:
            update["outcome"] = obs.outcome or Outcome.INFRA_ERROR
            update["ended_at"] = obs.ended_at if obs.ended_at is not None else attempt.ended_at
        new = attempt.model_copy(update=update)
        if new == attempt:
            return attempt
        return self.update(new)

    def finish(self, attempt: Attempt, outcome: Outcome, *, now: float, reason: str) -> Attempt:
        return self.update(
            attempt.model_copy(
                update={
                    "state": AttemptState.DONE,
                    "outcome": outcome,
                    "ended_at": now,
                    "reason": reason,
                }
            )
        )

    def _persist(self) -> None:
        self.store.write_atomic(LEDGER_PATH, self._doc.model_dump_json(indent=1).encode())
