"""The handoff marker and "wait until you own the step": the worker's side of spot pools.

**Handoff marker.** To move a step from a running attempt to another one (on-demand back to a spot
attempt that just started), the orchestrator writes ``handoff/<attempt>`` under the step's
checkpoint store: a tiny JSON object (``attempt``, ``reason``, ``at``, optional ``deadline``).
``spot-run``'s notice watcher and the :class:`Checkpointer` watch it beside the metadata
endpoints; seeing it is a ``TerminationNotice(kind=HANDOFF)``: save, exit 75, as for a reclaim.

**Ownership.** Several attempts of one step may be live at once (pending spot attempts racing in
several placements; a running on-demand attempt and a spot probe). At start a worker reads the
step's ledger and waits while any *other* attempt is live and not being cancelled as raced; it
exits 0 without touching the checkpoint when its own attempt is the one cancelled as raced, and
waits for an attempt that hands the step over (``handoff``) until that one is done, so it resumes
from the final checkpoint. A step with one live attempt proceeds at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from spot_workflows.core.outcomes import (
    RESERVED_EXIT_CODE,
    Attempt,
    Capacity,
    NoticeKind,
    Outcome,
    TerminationNotice,
)
from spot_workflows.errors import CheckpointError, ConfigError, LedgerError
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

log = logging.getLogger("spot_workflows.handoff")

HANDOFF_DIR = "handoff"
OWNERSHIP_WAIT_ENV = "SPOT_OWNERSHIP_WAIT_S"
DEFAULT_OWNERSHIP_WAIT_S = 900.0
OWNERSHIP_POLL_S = 1.0
WRAPPED_ENV = "SPOT_RUN_WRAPPED"
"""Set to ``1`` by ``spot-run`` for its child: spot-run already waited for ownership and watches
the handoff marker, so the child's Checkpointer does neither again."""


# -- the marker ----------------------------------------------------------------------------------
def marker_path(attempt: int) -> str:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ConfigError(f"attempt must be an integer >= 1, got {attempt!r}")
    return f"{HANDOFF_DIR}/{attempt}"


def write_marker(
    store: CheckpointStore,
    attempt: int,
    *,
    reason: str = "handoff",
    now: float | None = None,
    deadline: float | None = None,
) -> dict:
    """Ask ``attempt``'s worker to save and exit (atomic write; returns what was written)."""
    doc: dict = {"attempt": attempt, "reason": reason, "at": time.time() if now is None else now}
    if deadline is not None:
        doc["deadline"] = float(deadline)
    store.write_atomic(marker_path(attempt), json.dumps(doc).encode())
    return doc


def read_marker(store: CheckpointStore, attempt: int) -> dict | None:
    """The marker for ``attempt`` (None: none). A marker that is not a JSON object is still a
    marker (a handoff was asked for): it reads as ``{"attempt": attempt}``."""
    raw = store.read(marker_path(attempt))
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {"attempt": attempt}


def clear_marker(store: CheckpointStore, attempt: int) -> None:
    """Remove ``attempt``'s marker (nothing if there is none)."""
    path = store._path(marker_path(attempt))
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(path)


write_handoff, read_handoff, clear_handoff = write_marker, read_marker, clear_marker


def marker_notice(doc: dict, *, attempt: int, step_key: str | None = None) -> TerminationNotice:
    """The termination notice a handoff marker stands for."""
    deadline = doc.get("deadline")
    when = None
    if isinstance(deadline, int | float) and not isinstance(deadline, bool):
        when = datetime.fromtimestamp(float(deadline), tz=UTC)
    return TerminationNotice(
        kind=NoticeKind.HANDOFF,
        source="handoff",
        deadline=when,
        seen_at=datetime.now(UTC),
        step_key=step_key,
        detail={"attempt": attempt, "reason": str(doc.get("reason") or "handoff")},
    )


def marker_check(
    store: CheckpointStore, attempt: int, *, step_key: str | None = None
) -> Callable[[], TerminationNotice | None]:
    """A check for a notice watcher: the handoff notice once the marker exists, else None."""

    def check() -> TerminationNotice | None:
        doc = read_marker(store, attempt)
        return None if doc is None else marker_notice(doc, attempt=attempt, step_key=step_key)

    return check


# -- ownership -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ownership:
    """What a worker of attempt ``attempt`` may do now: ``own`` (go on), ``raced`` (exit 0
    without touching the checkpoint) or ``wait`` (for the attempts in ``waiting_for``)."""

    verdict: str
    waiting_for: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.verdict != "wait":
            return self.verdict
        return "waiting for attempt(s) " + ", ".join(map(str, self.waiting_for))


def ownership(attempts: Sequence[Attempt] | None, attempt: int) -> Ownership:
    """Pure: the verdict for ``attempt`` given the step's ledger (None: no ledger yet).

    The worker waits while another attempt of the step is live and not being cancelled as
    RACED, except a SPOT probe kept beside this ON_DEMAND attempt (a later SPOT attempt): the
    probe's own worker waits for this one (until it hands over and ends), never the reverse."""
    mine = next((a for a in attempts or () if a.number == attempt), None)
    if mine is not None and mine.stopping is Outcome.RACED:
        return Ownership("raced")

    def probe_of_mine(other: Attempt) -> bool:
        return (
            mine is not None
            and mine.capacity is Capacity.ON_DEMAND
            and other.capacity is Capacity.SPOT
            and other.number > mine.number
        )

    blocking = tuple(
        a.number
        for a in attempts or ()
        if a.number != attempt
        and a.live
        and a.stopping is not Outcome.RACED
        and not probe_of_mine(a)
    )
    return Ownership("wait", blocking) if blocking else Ownership("own")


def ownership_wait_s(environ: dict | None = None) -> float:
    """``SPOT_OWNERSHIP_WAIT_S`` (seconds >= 0), default 900."""
    env = os.environ if environ is None else environ
    raw = env.get(OWNERSHIP_WAIT_ENV)
    if not raw:
        return DEFAULT_OWNERSHIP_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{OWNERSHIP_WAIT_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


def await_ownership(
    store: CheckpointStore,
    attempt: int,
    *,
    timeout_s: float = DEFAULT_OWNERSHIP_WAIT_S,
    poll_s: float = OWNERSHIP_POLL_S,
    say: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Ownership:
    """Read the ledger until attempt ``attempt`` owns the step, is raced, or ``timeout_s`` passes
    (then the last ``wait`` verdict is returned). An unreadable ledger is not waited on (the
    runner reports it); a store that fails to answer is asked again until the timeout."""
    from spot_workflows.ledger import read_attempts  # the one reader of the ledger format

    say = say or log.info
    deadline = clock() + timeout_s
    told = None
    verdict = Ownership("own")
    while True:
        try:
            verdict = ownership(read_attempts(store), attempt)
        except LedgerError as exc:
            say(f"cannot read the step's ledger ({exc}); going on without waiting")
            return Ownership("own")
        except CheckpointError as exc:
            say(f"cannot read the step's ledger yet: {exc}")
            verdict = Ownership("wait")
        if verdict.verdict != "wait" or clock() >= deadline:
            return verdict
        if verdict != told:
            told = verdict
            say(f"attempt {attempt} does not own the step yet: {verdict.describe()}")
        sleep(max(0.0, min(poll_s, deadline - clock())))


def own_step_or_exit(
    store: CheckpointStore, attempt: int, *, say: Callable[[str], None] | None = None
) -> None:
    """Wait (``SPOT_OWNERSHIP_WAIT_S``) until ``attempt`` owns the step; else exit without
    touching the checkpoint: 0 when it was cancelled as raced, 75 when it never got the step."""
    say = say or log.warning
    wait_s = ownership_wait_s()
    verdict = await_ownership(store, attempt, timeout_s=wait_s, say=say)
    if verdict.verdict == "own":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if verdict.verdict == "raced":
        say(f"attempt {attempt} was cancelled as raced: exiting 0 without running")
        sys.exit(0)
    say(
        f"attempt {attempt} did not get the step within {OWNERSHIP_WAIT_ENV}={wait_s:g}s "
        f"({verdict.describe()}): exiting {RESERVED_EXIT_CODE} without running"
    )
    sys.exit(RESERVED_EXIT_CODE)


def watch_marker(
    store: CheckpointStore,
    attempt: int,
    *,
    on_notice: Callable[[TerminationNotice], None],
    every_s: float,
    stop: threading.Event,
    step_key: str | None = None,
) -> threading.Thread:
    """Poll ``attempt``'s marker every ``every_s`` in a daemon thread until ``stop`` is set; call
    ``on_notice`` once with the handoff notice when the marker appears."""
    check = marker_check(store, attempt, step_key=step_key)

    def watch() -> None:
        while not stop.wait(every_s):
            try:
                notice = check()
            except Exception as exc:  # the store did not answer: ask again next time
                log.debug("handoff marker check failed: %s", exc)
                continue
            if notice is not None:
                log.warning("handoff notice for attempt %s: save and exit", attempt)
                on_notice(notice)
                return

    thread = threading.Thread(target=watch, name="spot-handoff", daemon=True)
    thread.start()
    return thread
