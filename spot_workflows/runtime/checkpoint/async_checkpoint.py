"""AsyncCheckpointer: the Checkpointer's cadence, resume and emergency save, with saves that cost
training only a memory copy.

::

    ckpt = AsyncCheckpointer.from_env(every_seconds=300, policy="skip")
    restored = ckpt.restore(map_location="cuda:0")           # None on the first attempt
    ...
    if ckpt.stop_requested:                                  # SIGTERM or a termination notice
        report = ckpt.emergency_save(step, state_fn)         # flush the newest state, timed
        ckpt.exit_preempted()                                # exit 75: PREEMPTED
    ckpt.maybe_save(step, state_fn)                          # snapshot now, write in background

A state is a tree of dicts/lists/tuples with tensors, numpy arrays, bytes and scalars
(:mod:`torch_state` builds one from a model, optimizer, scheduler, scaler, RNG states and the
data-loader position). ``state`` arguments may also be a callable returning the tree, so the tree
is only built when a save actually happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from spot_workflows.errors import CheckpointError, CorruptCheckpointError
from spot_workflows.runtime.checkpoint.async_writer import (
    AsyncCheckpointWriter,
    InFlightPolicy,
    SaveResult,
    SaveTicket,
)
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer, EmergencySaveReport
from spot_workflows.runtime.checkpoint.snapshot import INDEX, parse_index, rebuild
from spot_workflows.runtime.store import bulk_io
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.manifest import Manifest

log = logging.getLogger("spot_workflows.checkpoint")

State = Any | Callable[[], Any]
"""A state tree, or a callable that builds one (called only when a save happens)."""


@dataclass(frozen=True)
class RestoredState:
    """The state a run resumes from."""

    step: int
    state: Any
    manifest: Manifest

    @property
    def progress(self) -> float | None:
        return self.manifest.progress


def load_state(
    store: CheckpointStore,
    manifest: Manifest,
    *,
    map_location: Any = None,
    allow_pickle: bool = False,
) -> Any:
    """Read an async checkpoint back into a state tree, verifying every file's checksum.

    ``map_location``: where tensors go (a device such as ``"cpu"``, a ``{saved: target}`` dict
    or a callable); by default each goes back to the device it was saved from.
    """
    names = {f.name for f in manifest.files}
    if INDEX not in names:
        raise CheckpointError(
            f"checkpoint step {manifest.step} in {store.uri} was not written by the async "
            f"checkpointer (no {INDEX}): read its files with Checkpointer.restore().read()"
        )
    doc = parse_index(store.read_file(manifest, INDEX))
    shards: dict[str, memoryview] = {}
    for shard in doc["shards"]:
        f = manifest.file(shard["name"])
        out = memoryview(bytearray(f.size))
        path = store._path(manifest.relpath(f.name))
        try:
            digest = bulk_io.read_into(
                store.fs, path, out, local=store._local, algorithm=f.algorithm
            )
        except (FileNotFoundError, CheckpointError):
            digest = None
        if digest != f.digest:  # read_into already checked the size
            raise CorruptCheckpointError(
                f"checkpoint file {store.uri}/{manifest.relpath(f.name)} is missing or does not "
                f"match its recorded size/{f.algorithm}. The checkpoint is damaged: delete "
                f"{store.uri}/step-{manifest.step}/manifest.json so restore() falls back to an "
                "older checkpoint, or start from scratch."
            )
        shards[shard["name"]] = out
    return rebuild(doc, shards, map_location=map_location, allow_pickle=allow_pickle)


class AsyncCheckpointer:
    """A :class:`Checkpointer` (cadence, signals, notices, emergency report) whose saves go
    through an :class:`AsyncCheckpointWriter` (snapshot, background persist)."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        *,
        policy: InFlightPolicy | str = InFlightPolicy.WAIT,
        io_threads: int | None = None,
        shard_bytes: int | None = None,
        pin_memory: bool | None = None,
        direct_io: bool = True,
        checksum: str | None = None,
    ) -> None:
        self.checkpointer = checkpointer
        self.writer = AsyncCheckpointWriter(
            checkpointer.store,
            policy=policy,
            io_threads=io_threads,
            shard_bytes=shard_bytes,
            pin_memory=pin_memory,
            direct_io=direct_io,
            checksum=checksum,
        )

    @classmethod
    def from_env(
        cls,
        *,
        policy: InFlightPolicy | str = InFlightPolicy.WAIT,
        io_threads: int | None = None,
        shard_bytes: int | None = None,
        pin_memory: bool | None = None,
        direct_io: bool = True,
        checksum: str | None = None,
        environ: Mapping[str, str] | None = None,
        **checkpointer_kw: Any,
    ) -> AsyncCheckpointer:
        """Build from the SPOT_* variables; ``checkpointer_kw`` go to ``Checkpointer.from_env``
        (``every_steps``, ``every_seconds``, ``adaptive``, ``keep_last``, ...)."""
        return cls(
            Checkpointer.from_env(environ=environ, **checkpointer_kw),
            policy=policy,
            io_threads=io_threads,
            shard_bytes=shard_bytes,
            pin_memory=pin_memory,
            direct_io=direct_io,
            checksum=checksum,
        )

    def __repr__(self) -> str:
        return f"AsyncCheckpointer({self.store.uri!r}, policy={self.writer.policy.value})"

    @property
    def store(self) -> CheckpointStore:
        return self.checkpointer.store

    @property
    def stop_requested(self) -> bool:
        return self.checkpointer.stop_requested

    @property
    def last_result(self) -> SaveResult | None:
        """The newest save that became durable."""
        return self.writer.last_result

    def should_save(self, step: int) -> bool:
        return self.checkpointer.should_save(step)

    # -- resume ----------------------------------------------------------------------------------

    def restore(
        self, *, map_location: Any = None, allow_pickle: bool = False
    ) -> RestoredState | None:
        """The newest valid checkpoint's state, or None when the step starts from scratch."""
        restored = self.checkpointer.restore()
        if restored is None:
            return None
        state = load_state(
            self.store, restored.manifest, map_location=map_location, allow_pickle=allow_pickle
        )
        return RestoredState(step=restored.step, state=state, manifest=restored.manifest)

    # -- saving ----------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: State,
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SaveTicket:
        """Snapshot now and persist in the background (see the writer's in-flight policy)."""
        meta = self.checkpointer._metadata(metadata, emergency=False)
        ticket = self.writer.save(step, state, progress=progress, metadata=meta)
        if not ticket.skipped:
            self.checkpointer.record_save(step, ticket.stall_seconds)
        return ticket

    def reserve(self, state: State) -> int:
        """Allocate the host buffer for ``state`` at start-up (the first save would otherwise
        pay for allocating and faulting in gigabytes); returns its size in bytes."""
        return self.writer.reserve(state)

    def maybe_save(
        self,
        step: int,
        state: State,
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SaveTicket | None:
        """:meth:`save` when the cadence says so, else None."""
        if not self.should_save(step):
            return None
        return self.save(step, state, progress=progress, metadata=metadata)

    def emergency_save(
        self,
        step: int,
        state: State,
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EmergencySaveReport:
        """Flush the newest state after a stop request and report whether it was durable before
        the notice deadline; never raises. A write in flight for an older step is abandoned (the
        newest state supersedes it); one for this very step is simply awaited."""
        meta = self.checkpointer._metadata(metadata, emergency=True)

        def flush() -> None:
            self.writer.save_now(step, state, progress=progress, metadata=meta)

        return self.checkpointer.run_emergency_save(step, flush)

    def flush(self, timeout: float | None = None) -> SaveResult | None:
        """Wait until the save in flight is durable; returns it (None if nothing was in flight).
        Raises CheckpointError if that save failed."""
        ticket = self.writer.wait(timeout)
        return None if ticket is None else ticket.result()

    # -- shutdown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the save in flight, free the host buffer, put back the SIGTERM handler."""
        try:
            self.writer.close()
        finally:
            self.checkpointer.close()

    def __enter__(self) -> AsyncCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exit_preempted(self) -> NoReturn:
        """Wait for any write in flight, then exit with the reserved code 75 (PREEMPTED)."""
        self.writer.wait()
        self.checkpointer.exit_preempted()
