"""A checkpoint written file by file by someone else's writer, then committed: the streaming
counterpart of :meth:`CheckpointStore.save` for the async checkpointer.

``CheckpointStore.save`` takes bytes or paths and writes them itself; the async writer instead
writes shards straight from host memory (``O_DIRECT`` on local disks, parallel multipart uploads
on object stores) and only needs to know *where* each file goes. :class:`StreamingSave` hands out
those paths and then makes the checkpoint visible exactly as the store does: data files renamed
into place and fsynced (local disks), ``step-<N>/manifest.json`` written after every data file,
``latest.json`` last, then tidy and retention. A writer killed at any moment before the manifest
leaves the previous checkpoint the newest valid one.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import time
from pathlib import Path
from typing import Any

from spot_workflows.errors import CheckpointError, ConfigError
from spot_workflows.runtime.store import digests, faults
from spot_workflows.runtime.store.checkpoint_store import LATEST, MANIFEST, CheckpointStore, log
from spot_workflows.runtime.store.file_io import fsync_dir
from spot_workflows.runtime.store.manifest import Manifest, ManifestFile, check_name
from spot_workflows.runtime.store.retention import prune_old_checkpoints, tidy_step_dir


class StreamingSave:
    """One checkpoint being written: :meth:`path` -> write -> :meth:`record`, then :meth:`commit`
    (or :meth:`abort`). Validates like :meth:`CheckpointStore.save`."""

    def __init__(
        self,
        store: CheckpointStore,
        step: int,
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        store.check_new_save(step, progress, metadata)
        old = store._load_manifest(step, warn=False)
        self.store = store
        self.local: bool = store._local
        self._draft = Manifest(
            step=step,
            created_at=0.0,
            progress=progress,
            metadata=dict(metadata or {}),
            subdir=f".v-{secrets.token_hex(6)}" if old is not None else None,
        )
        self._staged: dict[str, tuple[str, str]] = {}  # name -> (final path, path written)
        self._files: dict[str, ManifestFile] = {}
        self._committed: Manifest | None = None

    @property
    def step(self) -> int:
        return self._draft.step

    def path(self, name: str) -> str:
        """Where to write file ``name``: a temporary name on local disks, the final object on
        object stores (an object appears whole when its upload completes)."""
        if name == MANIFEST or name in self._staged:
            raise ConfigError(f"checkpoint file name {name!r} is reserved or used twice")
        final = self.store._path(self._draft.relpath(check_name(name)))
        target = self.store._tmp(final) if self.local else final
        if self.local:
            os.makedirs(posixpath.dirname(target), exist_ok=True)
        self._staged[name] = (final, target)
        return target

    def record(self, name: str, size: int, digest: str, algorithm: str = "sha256") -> None:
        """Note that file ``name`` (from :meth:`path`) is written and durable, with its size and
        checksum (``algorithm``: ``sha256`` or ``crc32c``)."""
        if name not in self._staged:
            raise ConfigError(f"record({name!r}) without path({name!r}) first")
        self._files[name] = ManifestFile.of(name, size, digest, digests.check(algorithm))

    def commit(self) -> Manifest:
        """Make the checkpoint visible and durable (manifest last); returns it. Call
        :meth:`tidy_and_prune` afterwards (it may run after the save is reported durable)."""
        missing = sorted(set(self._staged) - set(self._files))
        if missing:
            raise CheckpointError(f"cannot commit step {self.step}: {missing} not written")
        faults.reached("staged")  # test-only fault injection; a no-op unless armed
        try:
            if self.local:
                for final, tmp in self._staged.values():
                    os.replace(tmp, final)
                for d in {posixpath.dirname(final) for final, _ in self._staged.values()}:
                    fsync_dir(d)
        except OSError as exc:
            self.abort()
            raise CheckpointError(
                f"could not move checkpoint step {self.step} into place in {self.store.uri}: "
                f"{exc}. The previous checkpoint is intact."
            ) from exc
        manifest = self._draft.model_copy(
            update={"files": list(self._files.values()), "created_at": time.time()}
        )
        body = manifest.model_dump_json(indent=1, exclude_none=True).encode()
        self.store.write_atomic(f"step-{self.step}/{MANIFEST}", body)  # visible from here
        try:  # latest.json is only a hint for cheap readers: the step manifest is authoritative
            self.store.write_atomic(LATEST, body)
        except CheckpointError as exc:
            log.warning("checkpoint step %d saved, but %s; readers scan step dirs", self.step, exc)
        self._committed = manifest
        return manifest

    def tidy_and_prune(self) -> None:
        """Retention after :meth:`commit`: drop leftovers and checkpoints beyond ``keep_last``
        (deleting gigabytes takes a while; the new checkpoint is already durable)."""
        if self._committed is not None:
            faults.reached("tidy")
            tidy_step_dir(self.store, self._committed)
            prune_old_checkpoints(self.store)

    def abort(self) -> None:
        """Remove what was written (best-effort); the checkpoint never becomes visible."""
        for _final, target in self._staged.values():
            try:
                if self.local:
                    Path(target).unlink(missing_ok=True)
                elif self.store.fs.exists(target):
                    self.store.fs.rm(target)
            except Exception as exc:  # best-effort: an invisible leftover is tidied later
                log.debug("could not remove %s: %s", target, exc)
        self._staged.clear()
        self._files.clear()
