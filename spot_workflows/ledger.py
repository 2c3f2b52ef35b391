"""The durable attempt ledger, stored next to the step's checkpoints.

Write-ahead: an attempt is recorded (with its deterministic job name and the runner that owns its
submission) *before* it is submitted, and its job id right after. Whoever runs the step next -- an
Airflow retry, a Prefect retry, a runner that crashed and came back, or a second runner of the same
step running at the same time -- reads the same ledger and re-attaches to the live attempt (by job
id, or by job name when the submission is still under way) instead of submitting a duplicate.

Every write is a compare-and-swap on the store (a lock file and a version check on local disks,
``IfMatch`` / ``IfNoneMatch`` on S3, ``ifGenerationMatch`` on GCS): a write that loses a race
re-reads the ledger and re-applies its change to what it finds, or drops it when it no longer
makes sense (the attempt was finished by someone else). Attempts are never removed; nothing is
ever overwritten blindly.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Observation, Outcome
from spot_workflows.errors import LedgerError, WriteConflictError
from spot_workflows.runtime.store.cas import read_versioned, write_if
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

LEDGER_PATH = "ledger.json"
_NAME_OK = re.compile(r"[^A-Za-z0-9-]+")
MAX_CAS_TRIES = 50
T = TypeVar("T")


def runner_id() -> str:
    """A name for this runner, unique across processes and hosts: who owns a submission."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LedgerDoc(BaseModel):
    format: int = 1
    step_key: str
    run_id: str = Field(default_factory=lambda: secrets.token_hex(3))
    attempts: list[Attempt] = Field(default_factory=list)


class AttemptIsLive(LedgerError):
    """Another runner recorded (and owns) the step's live attempt: re-attach to it."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(
            f"attempt {attempt.number} is live (owner {attempt.owner}); re-attach to it instead "
            "of submitting another"
        )
        self.attempt = attempt


class LedgerMoved(LedgerError):
    """Another runner of the step recorded attempts since this runner decided what to do: the
    decision is stale (the step may even have succeeded meanwhile); decide again."""

    def __init__(self, seen: int, now: int) -> None:
        super().__init__(
            f"the ledger holds {now} attempts, not the {seen} this decision was based on; "
            "decide again"
        )


class Ledger:
    """Attempts of one step, persisted with compare-and-swap after every change."""

    def __init__(
        self, store: CheckpointStore, doc: LedgerDoc, version: str | None, owner: str
    ) -> None:
        self.store = store
        self._doc = doc
        self._version = version
        self.owner = owner
        self.writes = 0  # successful writes by this object (kept low: no write when unchanged)
        self.conflicts = 0  # writes lost to another writer and re-applied

    @classmethod
    def open(cls, store: CheckpointStore, step_key: str, *, owner: str | None = None) -> Ledger:
        doc, version = _load(store, step_key)
        return cls(store, doc, version, owner or runner_id())

    def refresh(self) -> Ledger:
        """Re-read the ledger (another runner may have written it)."""
        self._doc, self._version = _load(self.store, self._doc.step_key)
        return self

    # -- reading ---------------------------------------------------------------------------
    @property
    def step_key(self) -> str:
        return self._doc.step_key

    @property
    def attempts(self) -> Sequence[Attempt]:
        return tuple(self._doc.attempts)

    @property
    def live(self) -> Attempt | None:
        """The step's live attempt: the running one when several are live (a race, or an
        on-demand attempt with a spot probe), else the newest live one; None when none is."""
        return primary_live(self._doc.attempts)

    @property
    def live_attempts(self) -> tuple[Attempt, ...]:
        """Every live attempt, oldest first: several while pending attempts race in several
        placements, or while a spot probe waits beside a running on-demand attempt."""
        return tuple(a for a in self._doc.attempts if a.live)

    def attempt(self, number: int) -> Attempt:
        if not 1 <= number <= len(self._doc.attempts):
            raise LedgerError(f"attempt {number} is not in the ledger of {self.step_key!r}")
        return self._doc.attempts[number - 1]

    def job_name(self, number: int) -> str:
        """Readable, unique job name for attempt ``number``: carries the step key."""
        return self._job_name(self._doc, number)

    # -- writing ---------------------------------------------------------------------------
    def begin(
        self,
        *,
        capacity: Capacity,
        backend: str,
        now: float,
        resumed_from_step: int | None = None,
        progress: float | None = None,
        after: int | None = None,
        placement: str | None = None,
        beside_live: bool = False,
    ) -> Attempt:
        """Record a new attempt, owned by this runner, before it is submitted (write-ahead).
        Raises :class:`AttemptIsLive` when another runner got there first, and
        :class:`LedgerMoved` when ``after`` (the number of attempts the decision to submit was
        based on) is no longer the number recorded.

        ``beside_live``: the planner adds a SPOT attempt next to live ones (racing placements, or
        a probe beside a running on-demand attempt); refused (:class:`AttemptIsLive`) when the
        placement already holds a live attempt, or when a live attempt is already running on SPOT."""

        def change(doc: LedgerDoc) -> Attempt:
            live = [a for a in doc.attempts if a.live]
            if live and not beside_live:
                raise AttemptIsLive(primary_live(doc.attempts) or live[-1])
            if live:
                clash = next(
                    (
                        a
                        for a in live
                        if a.placement == placement
                        or (a.capacity is Capacity.SPOT and a.state is AttemptState.RUNNING)
                        or capacity is not Capacity.SPOT
                    ),
                    None,
                )
                if clash is not None:
                    raise AttemptIsLive(clash)
            if after is not None and len(doc.attempts) != after:
                raise LedgerMoved(after, len(doc.attempts))
            number = len(doc.attempts) + 1
            attempt = Attempt(
                number=number,
                capacity=capacity,
                job_name=self._job_name(doc, number),
                backend=backend,
                submitted_at=now,
                resumed_from_step=resumed_from_step,
                progress_start=progress,
                owner=self.owner,
                placement=placement,
            )
            doc.attempts.append(attempt)
            return attempt

        return self._mutate(change)

    def change(self, number: int, fn: Callable[[Attempt], Attempt]) -> Attempt:
        """Apply ``fn`` to attempt ``number`` as it is in the store now (re-applied after a lost
        race); no write when ``fn`` changes nothing. Returns the attempt as stored."""

        def apply(doc: LedgerDoc) -> Attempt:
            if not 1 <= number <= len(doc.attempts):
                raise LedgerError(f"attempt {number} is not in the ledger of {doc.step_key!r}")
            current = doc.attempts[number - 1]
            new = fn(current)
            if new != current:
                doc.attempts[number - 1] = new
            return new

        return self._mutate(apply)

    def update(self, attempt: Attempt, **fields: object) -> Attempt:
        """Set ``fields`` on the attempt; without ``fields``, the fields in which ``attempt``
        differs from the ledger's copy. On a finished attempt only bookkeeping fields are set:
        nothing brings a finished attempt back to life."""
        if not fields:
            base = self.attempt(attempt.number)
            fields = {k: v for k, v in attempt.model_dump().items() if v != getattr(base, k)}
            fields = {k: getattr(attempt, k) for k in fields}

        def fn(current: Attempt) -> Attempt:
            keep = fields
            if not current.live:
                keep = {k: v for k, v in fields.items() if k not in _LIVE_FIELDS}
            return current.model_copy(update=keep) if keep else current

        return self.change(attempt.number, fn)

    def set_job_id(self, attempt: Attempt, job_id: str) -> Attempt:
        """Record the job id of a submitted attempt (kept if another runner recorded it first)."""
        return self.change(
            attempt.number,
            lambda a: a if a.job_id is not None else a.model_copy(update={"job_id": job_id}),
        )

    def take_over(self, attempt: Attempt) -> Attempt:
        """Become the owner of a recorded attempt whose owner never submitted it (crashed)."""
        expected = attempt.owner

        def fn(current: Attempt) -> Attempt:
            if current.job_id is not None or current.owner != expected or not current.live:
                return current  # submitted, or taken over by someone else meanwhile
            return current.model_copy(update={"owner": self.owner})

        return self.change(attempt.number, fn)

    def observe(self, attempt: Attempt, obs: Observation) -> Attempt:
        """Fold a backend observation into the attempt (no write when nothing changed)."""

        def fn(current: Attempt) -> Attempt:
            if not current.live:
                return current
            update: dict = {"state": obs.state}
            for field in ("reason", "exit_code", "instance_id", "instance_type", "zone"):
                value = getattr(obs, field)
                if value is not None:
                    update[field] = value
            if obs.started_at is not None and current.started_at is None:
                update["started_at"] = obs.started_at
            if obs.state is AttemptState.DONE:
                update["outcome"] = obs.outcome or Outcome.INFRA_ERROR
                update["ended_at"] = obs.ended_at if obs.ended_at is not None else current.ended_at
            return current.model_copy(update=update)

        return self.change(attempt.number, fn)

    def finish(self, attempt: Attempt, outcome: Outcome, *, now: float, reason: str) -> Attempt:
        """Record how the attempt ended (kept as it is if another runner finished it first)."""

        def fn(current: Attempt) -> Attempt:
            if not current.live:
                return current
            update = {"state": AttemptState.DONE, "outcome": outcome, "ended_at": now}
            return current.model_copy(update={**update, "reason": reason})

        return self.change(attempt.number, fn)

    def reopen(self, *, now: float, reason: str) -> Attempt:
        """Let a step whose last attempt was cancelled from outside run again: that attempt is
        recorded as stopped (resumable). Raises LedgerError when there is nothing to reopen."""

        def change(doc: LedgerDoc) -> Attempt:
            ended = [a for a in doc.attempts if a.outcome is not Outcome.RACED]
            last = ended[-1] if ended else None
            if last is None or last.outcome is not Outcome.CANCELLED:
                what = "no attempts" if last is None else f"attempt {last.number} is {last.state}"
                what += f" ({last.outcome.value})" if last is not None and last.outcome else ""
                raise LedgerError(f"nothing to reopen for step {doc.step_key!r}: {what}")
            new = last.model_copy(
                update={"outcome": Outcome.STOPPED, "reason": f"{reason} (was: {last.reason})"}
            )
            doc.attempts[last.number - 1] = new
            return new

        return self._mutate(change)

    # -- compare-and-swap ---------------------------------------------------------------------
    def _mutate(self, change: Callable[[LedgerDoc], T]) -> T:
        for _ in range(MAX_CAS_TRIES):
            doc = self._doc.model_copy(deep=True)
            result = change(doc)
            if doc == self._doc:
                return result  # nothing changed: no write
            data = doc.model_dump_json(indent=1).encode()
            try:
                self._version = write_if(self.store, LEDGER_PATH, data, expected=self._version)
            except WriteConflictError:
                self.conflicts += 1
                self.refresh()
                continue
            self._doc = doc
            self.writes += 1
            return result
        raise LedgerError(
            f"ledger {self.store.uri}/{LEDGER_PATH} changed under every one of {MAX_CAS_TRIES} "
            "writes: too many runners are writing this step's ledger at once"
        )

    def _job_name(self, doc: LedgerDoc, number: int) -> str:
        base = _NAME_OK.sub("-", doc.step_key).strip("-")[:80] or "step"
        return f"{base}-{doc.run_id}-a{number}"


_LIVE_FIELDS = frozenset(
    {
        "state",
        "outcome",
        "stopping",
        "handoff",
        "job_id",
        "owner",
        "ended_at",
        "started_at",
        "reason",
    }
)


def primary_live(attempts: Sequence[Attempt]) -> Attempt | None:
    """The attempt a step is "on" when several are live: the oldest running one that is not
    being stopped, else the newest live one (None: no live attempt)."""
    live = [a for a in attempts if a.live]
    running = [a for a in live if a.state is AttemptState.RUNNING and a.stopping is None]
    if running:
        return running[0]
    return live[-1] if live else None


def read_attempts(store: CheckpointStore) -> list[Attempt] | None:
    """The attempts recorded in the ledger under ``store`` (None: no ledger yet), read-only, for
    readers that do not know the step key (a worker's checkpointer). The one reader of the ledger
    format besides :class:`Ledger`; raises :class:`LedgerError` when it is unreadable."""
    found = read_versioned(store, LEDGER_PATH)
    if found.data is None:
        return None
    return list(_parse(store, found.data).attempts)


def _parse(store: CheckpointStore, data: bytes) -> LedgerDoc:
    try:
        doc = LedgerDoc.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        raise LedgerError(
            f"ledger {store.uri}/{LEDGER_PATH} is unreadable ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}); move it aside to start the step afresh, or restore it from "
            "a backup -- spot-workflows will not guess which jobs are live"
        ) from exc
    return doc


def _load(store: CheckpointStore, step_key: str) -> tuple[LedgerDoc, str | None]:
    found = read_versioned(store, LEDGER_PATH)
    if found.data is None:
        return LedgerDoc(step_key=step_key), None
    doc = _parse(store, found.data)
    if doc.step_key != step_key:
        raise LedgerError(
            f"ledger {store.uri}/{LEDGER_PATH} belongs to step {doc.step_key!r}, not "
            f"{step_key!r}; give each step its own checkpoint URI"
        )
    return doc, found.version
