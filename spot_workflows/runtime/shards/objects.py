"""Object primitives for the shard ledger on a :class:`CheckpointStore`'s filesystem.

The one that matters is :meth:`ShardObjects.create_exclusive`: create an object only if it does
not exist, never half-visible. Local disks: write a temp file, fsync, ``os.link`` it to the final
name (``link`` fails when the name exists). S3 and GCS: s3fs / gcsfs ``pipe_file(mode="create")``,
i.e. a conditional PUT (``IfNoneMatch='*'`` / ``ifGenerationMatch=0``) that the service refuses
when the object exists. ``memory://`` (tests, one process): check-then-write under a lock.
Any other filesystem is refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
import threading
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from pydantic import BaseModel, ValidationError

from spot_workflows.errors import CheckpointError, ConfigError, CorruptCheckpointError
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.file_io import fsync_dir

TMP_PREFIX = ".spot-tmp-"
_MEMORY_LOCK = threading.Lock()  # memory:// lives in one process: a lock makes create exclusive


def _exclusive_kind(fs: object) -> str:
    if isinstance(fs, LocalFileSystem):
        return "local"
    if isinstance(fs, MemoryFileSystem):
        return "memory"
    if type(fs).__module__.split(".")[0] in ("s3fs", "gcsfs"):
        return "conditional-put"
    raise ConfigError(
        f"the shard ledger needs an exclusive create, which {type(fs).__name__} does not offer: "
        "use a file://, s3:// or gs:// checkpoint URI"
    )


class ShardObjects:
    """Paths relative to the store root; every method raises :class:`CheckpointError` on I/O."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.kind = _exclusive_kind(store.fs)

    def abs(self, rel: str) -> str:
        return f"{self.store.root.rstrip('/')}/{rel}"

    def create_exclusive(self, rel: str, data: bytes, *, durable: bool = True) -> bool:
        """Create ``rel`` with ``data`` unless it exists (then return False); never half-visible
        on local disks and object stores. ``durable=False`` skips the fsyncs on local disks (for
        leases, which a crash may lose)."""
        path = self.abs(rel)
        try:
            if self.kind == "local":
                return self._link_create(path, data, durable=durable)
            if self.kind == "memory":
                with _MEMORY_LOCK:
                    if self.store.fs.exists(path):
                        return False
                    self.store.fs.pipe_file(path, data)
                    return True
            self.store.fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise CheckpointError(f"could not create {self.store.uri}/{rel}: {exc}") from exc

    @staticmethod
    def _link_create(path: str, data: bytes, *, durable: bool) -> bool:
        head, base = posixpath.split(path)
        os.makedirs(head, exist_ok=True)
        tmp = f"{head}/{TMP_PREFIX}{secrets.token_hex(6)}-{base}"
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails when the marker exists
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        if durable:
            fsync_dir(head)
        return True

    def write_object(self, rel: str, value: bytes | Path) -> tuple[int, str]:
        """Write a fresh object (size, sha256); durable (fsync) on local disks."""
        path = self.abs(rel)
        data = value if isinstance(value, bytes) else Path(value).read_bytes()
        try:
            if self.kind == "local":
                os.makedirs(posixpath.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                self.store.fs.pipe_file(path, data)
        except OSError as exc:
            raise CheckpointError(
                f"could not write {self.store.uri}/{rel}: {exc}; check free space and permissions"
            ) from exc
        return len(data), hashlib.sha256(data).hexdigest()

    def names(self, rel_dir: str) -> list[str]:
        """Base names of the objects directly under ``rel_dir`` (temp files left out)."""
        fs = self.store.fs
        if self.kind == "local":
            try:
                return sorted(
                    n for n in os.listdir(self.abs(rel_dir)) if not n.startswith(TMP_PREFIX)
                )
            except (FileNotFoundError, NotADirectoryError):
                return []
        fs.invalidate_cache()
        try:
            entries = fs.ls(self.abs(rel_dir), detail=False)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(str(e).rstrip("/")) for e in entries)
        return sorted(n for n in names if n and not n.startswith(TMP_PREFIX))

    def read_model(self, rel: str, model: type[BaseModel]):
        raw = self.store.read(rel)
        if raw is None:
            return None
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptCheckpointError(
                f"{self.store.uri}/{rel} is unreadable ({exc.errors()[0]['msg']}); delete it to "
                "redo that shard"
            ) from None

    def rm(self, rel: str, *, recursive: bool = False) -> None:
        with contextlib.suppress(OSError):
            self.store.fs.rm(self.abs(rel), recursive=recursive)
