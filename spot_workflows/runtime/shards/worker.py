"""The sharded worker loop: take a shard, process it batch by batch, commit it, repeat.

A :class:`ShardJob` turns a shard into batches of encoded output (``batches(shard, start)``,
deterministic, with the same batch boundaries whatever ``start`` is) and builds the shard's
output object from them (``combine``). :class:`ShardWorker` drives it against a source of leases
(``shard_queue``) and a :class:`ShardLedger`. On a stop request (SIGTERM / termination notice via
the :class:`Checkpointer`), after every batch it decides: finish and commit the in-flight shard
when that fits before the notice deadline (at the rate measured so far), else save the batches
done so far as an in-shard checkpoint (``shards/partial/``), release the lease and stop. The
caller then exits 75 (:meth:`Checkpointer.exit_preempted`); the next worker resumes at that row.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC
from typing import Protocol

from spot_workflows.core.outcomes import RESERVED_EXIT_CODE
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.planning import Partial, Shard, can_finish
from spot_workflows.runtime.shards.queue import Lease, ShardSource

log = logging.getLogger("spot_workflows.shards")


class ShardJob(Protocol):
    suffix: str
    """Appended to output object names (e.g. ``.parquet``)."""

    def batches(self, shard: Shard, start: int) -> Iterable[tuple[int, bytes]]:
        """Process the shard from row ``start`` on; yield ``(rows, encoded output)`` per batch."""
        ...

    def combine(self, shard: Shard, parts: Sequence[bytes]) -> bytes:
        """The shard's output object from all its encoded batches, in order."""
        ...


@dataclass(frozen=True)
class WholeShard:
    """A :class:`ShardJob` from ``fn(shard) -> (rows, output bytes)``: no in-shard checkpoint,
    so a notice either lets the shard finish or drops it (it is redone from row 0)."""

    fn: Callable[[Shard], tuple[int, bytes]]
    suffix: str = ""

    def batches(self, shard: Shard, start: int) -> Iterable[tuple[int, bytes]]:
        if start == 0:  # else the one batch is already in the in-shard checkpoint
            yield self.fn(shard)

    def combine(self, shard: Shard, parts: Sequence[bytes]) -> bytes:
        return parts[0]


@dataclass
class WorkerReport:
    worker: str
    committed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # processed, but another worker committed first
    failed: list[str] = field(default_factory=list)  # application errors (retried later)
    dead: list[str] = field(default_factory=list)  # given up on
    stopped: bool = False
    checkpointed: str | None = None  # shard saved with an in-shard checkpoint on stop
    rows_processed: int = 0
    rows_resumed: int = 0  # rows not redone thanks to in-shard checkpoints
    dead_in_ledger: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def exit_code(self) -> int:
        """75 when stopped by a notice (PREEMPTED), 1 when shards are dead (APP_ERROR), else 0."""
        if self.stopped:
            return RESERVED_EXIT_CODE
        return 1 if self.dead or self.dead_in_ledger else 0


class ShardWorker:
    """Runs one worker to exhaustion of its source, or until a stop request."""

    def __init__(
        self,
        *,
        ledger: ShardLedger,
        source: ShardSource,
        job: ShardJob,
        checkpointer: Checkpointer | None = None,
        on_batch: Callable[[Shard, int], None] | None = None,
        safety: float = 1.5,
        default_grace_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger, self.source, self.job = ledger, source, job
        self.checkpointer = checkpointer
        self.on_batch = on_batch
        self.safety, self.default_grace_s = safety, default_grace_s
        self.clock, self.wall = clock, wall_clock
        self.report = WorkerReport(worker=ledger.worker)
        self._rate: float | None = None  # seconds per row, from finished shards
        self._shard_s: float | None = None  # typical shard seconds
        self._commit_s = 0.0
        self._stop_seen_at: float | None = None

    # -- stop and deadline -----------------------------------------------------------------------
    def _stop(self) -> bool:
        if self.checkpointer is None or not self.checkpointer.stop_requested:
            return False
        if self._stop_seen_at is None:
            self._stop_seen_at = self.wall()
        return True

    def _time_left(self) -> float:
        assert self._stop_seen_at is not None and self.checkpointer is not None
        notice = self.checkpointer.notice
        if notice is not None and notice.deadline is not None:
            when = notice.deadline
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() - self.wall()
        return self._stop_seen_at + self.default_grace_s - self.wall()

    def _finish_fits(self, shard: Shard, offset: int, rows_here: int, started: float) -> bool:
        elapsed = self.clock() - started
        rate = elapsed / rows_here if rows_here else self._rate
        return can_finish(
            rows_left=None if shard.rows is None else shard.rows - offset,
            seconds_per_row=rate,
            expected_shard_s=self._shard_s,
            elapsed_in_shard_s=elapsed,
            commit_s=self._commit_s,
            time_left_s=self._time_left(),
            safety=self.safety,
        )

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> WorkerReport:
        while True:
            lease = self.source.next(self._stop)
            if lease is None:
                break
            if not self._process(lease) or self._stop():
                break
        self.report.stopped = self._stop() and not self.ledger.status()["complete"]
        self.ledger.publish_progress(force=True)
        self.report.dead_in_ledger = sorted(self.ledger.dead_ids())
        return self.report

    def _failed(self, lease: Lease, exc: Exception) -> bool:
        error = f"{type(exc).__name__}: {exc}"
        log.error("shard %s failed: %s", lease.shard.id, error)
        dead = lease.failed(error)
        (self.report.dead if dead else self.report.failed).append(lease.shard.id)
        return True

    def _process(self, lease: Lease) -> bool:
        """Work on one shard; False when the worker must stop (checkpointed inside it)."""
        shard, report = lease.shard, self.report
        if self.ledger.is_done(shard.id):
            lease.done()
            return True
        loaded = self.ledger.load_partial(shard)
        base: Partial | None = loaded[0] if loaded else None
        parts: list[bytes] = list(loaded[1]) if loaded else []
        offset = base.rows if base else 0
        report.rows_resumed += offset
        fresh: list[tuple[int, bytes]] = []
        started, rows_here = self.clock(), 0
        batches = iter(self.job.batches(shard, offset))
        while True:
            try:  # only the job's own code counts as an application error
                item = next(batches, None)
            except Exception as exc:
                return self._failed(lease, exc)
            if item is None:
                break
            rows, payload = item
            parts.append(payload)
            fresh.append((rows, payload))
            offset += rows
            rows_here += rows
            report.rows_processed += rows
            if self.on_batch is not None:
                self.on_batch(shard, rows)
            lease.heartbeat()
            if self._stop() and not self._finish_fits(shard, offset, rows_here, started):
                self.ledger.save_partial(shard, fresh, base=base)
                lease.release()
                report.checkpointed = shard.id
                log.info("stopping inside %s at row %d (in-shard checkpoint)", shard.id, offset)
                return False
        try:
            data = self.job.combine(shard, parts)
        except Exception as exc:
            return self._failed(lease, exc)
        t0 = self.clock()
        commit = self.ledger.commit(shard, data, rows=offset, suffix=self.job.suffix)
        lease.done()
        self._commit_s = self.clock() - t0
        (report.committed if commit.won else report.lost).append(shard.id)
        if base is not None or commit.won:
            self.ledger.clear_partial(shard)
        took = self.clock() - started
        self._shard_s = took if self._shard_s is None else 0.5 * (self._shard_s + took)
        if rows_here:
            self._rate = took / rows_here
        if commit.won:
            self.ledger.publish_progress()
        return True


# -- several worker processes in one step -------------------------------------------------------


def run_processes(commands: Sequence[Sequence[str]], *, env: dict[str, str] | None = None) -> int:
    """Run worker commands as child processes until all exit; forward SIGTERM/SIGINT to them.

    Returns 0 when all exited 0; else the first code that is neither 0 nor 75 (an application
    error); else 75 (some stopped on a notice; the next attempt resumes them).
    """
    procs = [subprocess.Popen(list(c), env=env) for c in commands]

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [c if c >= 0 else 128 - c for c in codes]
    bad = [c for c in codes if c not in (0, RESERVED_EXIT_CODE)]
    if bad:
        return bad[0]
    return RESERVED_EXIT_CODE if RESERVED_EXIT_CODE in codes else 0


def worker_id(environ: Mapping[str, str], default: str = "w0") -> str:
    """``SPOT_SHARD_WORKER`` if set (stable per worker slot, so a restarted worker takes its own
    claims back at once), else ``default``."""
    return environ.get("SPOT_SHARD_WORKER") or default


class LedgerProgress:
    """A rich progress bar fed by the ledger (polled in a thread) while workers run."""

    def __init__(self, ledger: ShardLedger, *, poll_s: float = 0.5, enabled: bool = True) -> None:
        self.ledger, self.poll_s, self.enabled = ledger, poll_s, enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LedgerProgress:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="shard-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("shards", total=len(self.ledger.shards))
            while True:
                status = self.ledger.status()
                dead = f" ({len(status['dead'])} dead)" if status["dead"] else ""
                bar.update(task, completed=status["done"], description=f"shards{dead}")
                if self._stop.wait(self.poll_s):
                    bar.update(task, completed=self.ledger.status()["done"])
                    return
