"""AsyncCheckpointWriter: snapshot now, persist in the background, at most one save in flight.

``save()`` copies the state into a reusable host buffer (pinned when CUDA is available; device
copies run on a side stream) and returns a :class:`SaveTicket` at once. A background thread then
writes the snapshot through the :class:`CheckpointStore` (:class:`StreamingSave`): shards in
parallel with large sequential writes (``O_DIRECT`` + fsync on local disks, parallel multipart
uploads on S3/GCS), a checksum of every file (crc32c by default, see ``digests.py``), the
manifest last.

When the next save is due while one is still being written, the :class:`InFlightPolicy` decides:
``SKIP`` returns a skipped ticket at once (training never waits; the cadence stays due, so the
next step tries again), ``WAIT`` blocks until the write in flight is durable, then snapshots.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from spot_workflows.errors import CheckpointError, ConfigError
from spot_workflows.runtime.checkpoint.host_buffers import HostBufferPool
from spot_workflows.runtime.checkpoint.snapshot import (
    INDEX,
    MIN_SHARD,
    Snapshot,
    nbytes_of,
    plan,
    take_snapshot,
)
from spot_workflows.runtime.checkpoint.state_tree import flatten
from spot_workflows.runtime.store import bulk_io, digests
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.manifest import Manifest
from spot_workflows.runtime.store.stream import StreamingSave

log = logging.getLogger("spot_workflows.checkpoint")


class InFlightPolicy(StrEnum):
    """What ``save()`` does when the previous save is still being written."""

    SKIP = "skip"
    WAIT = "wait"


@dataclass(frozen=True)
class SaveResult:
    """A save that is durable: visible in the store, every file fsynced/uploaded."""

    step: int
    manifest: Manifest
    nbytes: int
    stall_seconds: float  # training was blocked this long (waiting + copying)
    persist_seconds: float  # from the end of the snapshot to the manifest
    durable_at: float  # wall clock (epoch seconds)

    @property
    def persist_gb_per_s(self) -> float:
        return self.nbytes / 1e9 / self.persist_seconds if self.persist_seconds > 0 else 0.0


class SaveTicket:
    """The handle ``save()`` returns: ``result()`` waits for the save to be durable."""

    def __init__(self, step: int, *, stall_seconds: float = 0.0, skipped: bool = False) -> None:
        self.step = step
        self.stall_seconds = stall_seconds
        self.skipped = skipped
        self._done = threading.Event()
        self._result: SaveResult | None = None
        self._error: BaseException | None = None
        if skipped:
            self._done.set()

    def __repr__(self) -> str:
        state = "skipped" if self.skipped else "done" if self.done() else "in flight"
        return f"SaveTicket(step={self.step}, {state}, stall={self.stall_seconds:.3f}s)"

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the save finished (or failed); False on timeout."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> SaveResult:
        """The durable save; raises CheckpointError if it failed or was skipped."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"checkpoint step {self.step} not durable after {timeout}s")
        if self.skipped:
            raise CheckpointError(f"checkpoint step {self.step} was skipped (a save was in flight)")
        if self._error is not None:
            if isinstance(self._error, CheckpointError):
                raise self._error
            raise CheckpointError(f"checkpoint step {self.step} failed: {self._error}")
        assert self._result is not None
        return self._result

    def _finish(self, result: SaveResult | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.set()


class AsyncCheckpointWriter:
    """Snapshot-then-persist saves into one :class:`CheckpointStore`; see the module doc.

    ``io_threads``: shards written (and hashed) in parallel, default ``min(4, cpus)``;
    ``shard_bytes``: the most bytes per shard file (default: the state split into ``io_threads``
    shards of at least 64 MiB); ``pin_memory``: None pins host buffers when CUDA is available;
    ``direct_io``: use ``O_DIRECT`` for local shard files where the file system allows it;
    ``checksum``: ``crc32c`` (default where its C extension is installed) or ``sha256``.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        policy: InFlightPolicy | str = InFlightPolicy.WAIT,
        io_threads: int | None = None,
        shard_bytes: int | None = None,
        pin_memory: bool | None = None,
        direct_io: bool = True,
        part_bytes: int = bulk_io.CHUNK,
        checksum: str | None = None,
    ) -> None:
        try:
            self.policy = InFlightPolicy(policy)
        except ValueError:
            raise ConfigError(f"policy must be 'skip' or 'wait', got {policy!r}") from None
        threads = io_threads if io_threads is not None else min(4, os.cpu_count() or 1)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"io_threads must be an integer >= 1, got {io_threads!r}")
        if shard_bytes is not None and shard_bytes < 4096:
            raise ConfigError(f"shard_bytes must be >= 4096, got {shard_bytes!r}")
        self.store = store
        self.io_threads = threads
        self.shard_bytes = shard_bytes
        self.direct_io = direct_io
        self.part_bytes = part_bytes
        self.checksum = digests.check(checksum) if checksum is not None else digests.fastest()
        self.pool = HostBufferPool(pin=pin_memory)
        self._lock = threading.Lock()
        self._in_flight: SaveTicket | None = None
        self._cancel = threading.Event()
        self._worker: threading.Thread | None = None  # the thread of the newest persist
        self.last_result: SaveResult | None = None

    def __repr__(self) -> str:
        return f"AsyncCheckpointWriter({self.store.uri!r}, policy={self.policy.value})"

    @property
    def in_flight(self) -> SaveTicket | None:
        """The save being written now, if any."""
        t = self._in_flight
        return t if t is not None and not t.done() else None

    def save(
        self,
        step: int,
        state: Any,
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SaveTicket:
        """Snapshot ``state`` and persist it in the background; see :class:`InFlightPolicy`.
        ``state`` may be a callable that builds the state: it is only called when not skipped."""
        _check(step, progress)
        started = time.perf_counter()
        with self._lock:
            busy = self.in_flight
            if busy is not None:
                if self.policy is InFlightPolicy.SKIP:
                    log.info("checkpoint step %d skipped: step %d still in flight", step, busy.step)
                    return SaveTicket(step, skipped=True)
                busy.wait()
            snapshot = self._snapshot(state)
            ticket = SaveTicket(step, stall_seconds=time.perf_counter() - started)
            self._in_flight = ticket
            self._cancel.clear()
            threading.Thread(
                target=self._persist,
                args=(ticket, snapshot, progress, metadata),
                name=f"spot-ckpt-step-{step}",
                daemon=True,  # a process that dies mid-write leaves the previous checkpoint
            ).start()
        return ticket

    def save_now(
        self,
        step: int,
        state: Any,
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SaveResult:
        """Save and wait until durable (the emergency path). A write in flight for an older
        step is cancelled first: the newest state supersedes it. Raises CheckpointError."""
        _check(step, progress)
        busy = self.in_flight
        if busy is not None:
            if busy.step == step and busy.wait() and busy.error is None:
                return busy.result()
            self.cancel()
        started = time.perf_counter()
        with self._lock:
            snapshot = self._snapshot(state)
            ticket = SaveTicket(step, stall_seconds=time.perf_counter() - started)
            self._in_flight = ticket
            self._cancel.clear()
            self._persist(ticket, snapshot, progress, metadata, background=False)
        return ticket.result()

    def reserve(self, state: Any) -> int:
        """Allocate (and fault in) the host buffer for ``state`` now, at start-up, instead of in
        the first save's stall; returns its size in bytes."""
        _, leaves = flatten(state() if callable(state) else state)
        shard_bytes = self.shard_bytes or max(MIN_SHARD, -(-nbytes_of(leaves) // self.io_threads))
        _, shards = plan(leaves, shard_bytes=shard_bytes)
        with self._lock:
            return self.pool.get(sum(s.nbytes for s in shards)).nbytes

    def wait(self, timeout: float | None = None) -> SaveTicket | None:
        """Wait for the save in flight (if any) to finish; returns its ticket."""
        ticket = self._in_flight
        if ticket is not None and not ticket.wait(timeout):
            raise TimeoutError(f"checkpoint step {ticket.step} still in flight after {timeout}s")
        return ticket

    def cancel(self) -> None:
        """Abandon the write in flight (its files are removed; the previous checkpoint stays)."""
        ticket = self._in_flight
        if ticket is not None and not ticket.done():
            self._cancel.set()
            ticket.wait()

    def drain(self) -> None:
        """Wait for the save in flight and for the retention after it (deleting old checkpoints
        runs after a save is reported durable)."""
        self.wait()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    def close(self) -> None:
        """:meth:`drain`, then free the host buffer."""
        self.drain()
        self.pool.release()

    # -- internals --------------------------------------------------------------------------------

    def _snapshot(self, state: Any) -> Snapshot:
        return take_snapshot(
            state() if callable(state) else state,
            self.pool,
            shard_bytes=self.shard_bytes,
            shard_count=self.io_threads,
        )

    def _persist(
        self,
        ticket: SaveTicket,
        snapshot: Snapshot,
        progress: float | None,
        metadata: dict[str, Any] | None,
        background: bool = True,
    ) -> None:
        previous = self._worker
        self._worker = threading.current_thread() if background else None
        if previous is not None and previous is not threading.current_thread():
            previous.join()  # its retention (deleting old checkpoints) may still be running
        started = time.perf_counter()
        try:
            snapshot.wait_ready()
            draft = StreamingSave(self.store, ticket.step, progress=progress, metadata=metadata)
            try:
                self._write_files(draft, snapshot)
                manifest = draft.commit()
            except BaseException:
                draft.abort()
                raise
        except BaseException as exc:
            if isinstance(exc, bulk_io.WriteCancelled):
                log.info("checkpoint step %d abandoned for a newer one", ticket.step)
            else:
                log.error("checkpoint step %d failed in the background: %s", ticket.step, exc)
            ticket._finish(None, exc)
            return
        result = SaveResult(
            step=ticket.step,
            manifest=manifest,
            nbytes=snapshot.nbytes,
            stall_seconds=ticket.stall_seconds,
            persist_seconds=time.perf_counter() - started,
            durable_at=time.time(),
        )
        self.last_result = result
        log.info(
            "checkpoint step %d durable: %.2f GB in %.2fs (%.2f GB/s), stall %.3fs",
            result.step,
            result.nbytes / 1e9,
            result.persist_seconds,
            result.persist_gb_per_s,
            result.stall_seconds,
        )
        ticket._finish(result, None)
        try:
            draft.tidy_and_prune()
        except Exception as exc:  # best-effort: the checkpoint is already durable
            log.warning("retention after checkpoint step %d failed: %s", ticket.step, exc)

    def _write_files(self, draft: StreamingSave, snapshot: Snapshot) -> None:
        jobs = [(draft.path(s.name), s.name, snapshot.shard_view(s)) for s in snapshot.shards]
        index = memoryview(snapshot.index_json())
        jobs.append((draft.path(INDEX), INDEX, index))
        lanes: list[list[tuple[str, str, memoryview]]] = [[] for _ in range(self.io_threads)]
        for i, job in enumerate(sorted(jobs, key=lambda j: -j[2].nbytes)):
            lanes[i % self.io_threads].append(job)
        errors: list[BaseException] = []

        def run(lane: list[tuple[str, str, memoryview]]) -> None:
            try:
                for path, name, view in lane:
                    size, digest = self._write_one(path, view, aligned=name != INDEX)
                    draft.record(name, size, digest, self.checksum)
            except BaseException as exc:
                self._cancel.set()  # stop the other lanes too
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(lane,), daemon=True) for lane in lanes[1:]]
        for t in threads:
            t.start()
        run(lanes[0])
        for t in threads:
            t.join()
        if errors:
            real = [e for e in errors if not isinstance(e, bulk_io.WriteCancelled)]
            raise (real or errors)[0]

    def _write_one(self, path: str, view: memoryview, *, aligned: bool) -> tuple[int, str]:
        if self.store._local:
            return bulk_io.write_local(
                path,
                view,
                direct=self.direct_io and aligned,
                cancelled=self._cancel.is_set,
                algorithm=self.checksum,
            )
        # a whole-object upload is idempotent: retry transient errors (throttling, 5xx, resets)
        # with the store's bounded backoff, like every synchronous write
        return self.store.retry.call(
            lambda: bulk_io.upload(
                self.store.fs,
                path,
                view,
                workers=max(4, 2 * self.io_threads),
                part_bytes=self.part_bytes,
                cancelled=self._cancel.is_set,
                algorithm=self.checksum,
            ),
            what=path,
        )


def _check(step: int, progress: float | None) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"checkpoint step must be an integer >= 0, got {step!r}")
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ConfigError(f"progress must be a fraction between 0 and 1, got {progress!r}")
