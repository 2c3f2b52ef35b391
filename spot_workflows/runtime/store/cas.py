"""Compare-and-swap writes of small objects (the attempt ledger) on every supported store.

Two processes that update one object at once (a zombie task and its retry, a cleared task whose
old trigger still runs) must never lose an update. :func:`read_versioned` returns an object's
bytes with an opaque version token; :func:`write_if` writes only if the object is still at that
version and otherwise raises :class:`~spot_workflows.errors.WriteConflictError` without writing,
so the caller re-reads, re-applies its change and tries again::

    while True:
        cur = read_versioned(store, "ledger.json")
        try:
            write_if(store, "ledger.json", change(cur.data), expected=cur.version)
            break
        except WriteConflictError:
            continue  # someone else won this round: start from their state

What each store does:

* ``file://``: an exclusive ``flock`` on a sibling lock file ``.<name>.lock`` (created on first
  use and left in place) is held while the current bytes are compared with ``expected`` and the
  new bytes go to a temp file in the same directory (fsynced) that replaces the object with
  ``os.replace`` (then the directory is fsynced). Safe across threads and processes: every call
  opens the lock file anew. Version: the sha256 of the content.
* ``memory://`` (tests): a process-wide lock around compare-and-write. Version: sha256.
* ``s3://``: ``GetObject`` returns the bytes and their ``ETag`` in one response; the write is
  ``PutObject`` with ``IfMatch=<ETag>`` (update) or ``IfNoneMatch="*"`` (create). Version: the
  ETag. S3 refuses with 412 ``PreconditionFailed``, 409 ``ConditionalRequestConflict`` (a
  concurrent conditional write) or 404 ``NoSuchKey`` (deleted since read): all are conflicts.
* ``gs://``: a media download returns the bytes with their generation (``x-goog-generation``);
  the write is a media upload with ``ifGenerationMatch=<generation>`` (``0``: create). Version:
  the generation. A failed precondition is 412. Without that header (gcp-storage-emulator) the
  read takes the generation from the object's metadata and pins the download to it. Note that
  gcp-storage-emulator ignores ``ifGenerationMatch`` altogether: against it writes are blind.

Content-hash versions (file, memory; S3's ETag is the MD5 of a single-part upload) do not change
when identical bytes are written again. That is harmless: a version names a state, and a change
computed from the current state is still correct.

Transient storage errors (throttling, 5xx, resets) are retried with ``store.retry``, like the
store's other writes; a conflict never is. A write whose response is lost is ambiguous: its retry
(ours or the SDK's) may report a conflict with itself. Keep changes idempotent (tag a ledger entry
with its writer's id) so that re-applying one after a re-read finds it already there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fsspec.asyn import sync
from fsspec.implementations.memory import MemoryFileSystem

from spot_workflows.errors import CheckpointError, ConfigError, WriteConflictError
from spot_workflows.runtime.store import faults
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.file_io import fsync_dir
from spot_workflows.runtime.store.manifest import check_name
from spot_workflows.runtime.store.retry import is_storage_error

__all__ = ["Versioned", "read_versioned", "write_if"]


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and version as read together."""

    data: bytes | None  # None: the object does not exist
    version: str | None  # opaque token; None when the object does not exist


_ABSENT = Versioned(None, None)
_MEMORY_LOCK = threading.Lock()  # memory:// is one dict per process
_S3_CONFLICTS = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})
_GCS_READ_TRIES = 5


class _Conflict(Exception):
    """Raised by a backend's write when the precondition failed (never retried)."""


def _digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


# -- local files -----------------------------------------------------------------------------------


def _file_read(store: CheckpointStore, path: str) -> Versioned:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return _ABSENT
    return Versioned(data, _digest(data))


def _file_write(store: CheckpointStore, path: str, data: bytes, expected: str | None) -> str:
    import fcntl  # POSIX only, like the rest of the local store's durability guarantees

    head, base = posixpath.split(path)
    os.makedirs(head, exist_ok=True)
    fd = os.open(f"{head}/.{base}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        if _file_read(store, path).version != expected:
            raise _Conflict
        tmp = store._tmp(path)
        try:
            with open(tmp, "wb") as f:
                faults.writing(f, data)  # test-only fault injection (off unless configured)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(head)
    finally:
        os.close(fd)
    return _digest(data)  # type: ignore[return-value]


# -- memory:// -------------------------------------------------------------------------------------


def _memory_read(store: CheckpointStore, path: str) -> Versioned:
    with _MEMORY_LOCK:
        try:
            data = store.fs.cat_file(path)
        except FileNotFoundError:
            return _ABSENT
    return Versioned(data, _digest(data))


def _memory_write(store: CheckpointStore, path: str, data: bytes, expected: str | None) -> str:
    with _MEMORY_LOCK:
        try:
            current = store.fs.cat_file(path)
        except FileNotFoundError:
            current = None
        if _digest(current) != expected:
            raise _Conflict
        store.fs.pipe_file(path, data)
    return _digest(data)  # type: ignore[return-value]


# -- s3:// (s3fs) ----------------------------------------------------------------------------------


def _s3_read(store: CheckpointStore, path: str) -> Versioned:
    fs = store.fs
    bucket, key, _ = fs.split_path(path)

    async def get() -> Versioned:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return Versioned(await resp["Body"].read(), resp["ETag"])
        finally:
            resp["Body"].close()

    try:
        return sync(fs.loop, get)
    except FileNotFoundError:
        return _ABSENT


def _s3_refused(exc: BaseException) -> bool:
    """True if S3 refused a conditional PutObject (s3fs keeps the ClientError as the cause)."""
    if isinstance(exc, FileExistsError):  # s3fs's translation of a failed If-None-Match
        return True
    seen: BaseException | None = exc
    while seen is not None:
        resp = getattr(seen, "response", None)
        if isinstance(resp, dict):
            code = (resp.get("Error") or {}).get("Code")
            status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return code in _S3_CONFLICTS or status in (409, 412)
        seen = seen.__cause__
    return False


def _s3_write(store: CheckpointStore, path: str, data: bytes, expected: str | None) -> str:
    fs = store.fs
    bucket, key, _ = fs.split_path(path)
    cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
    try:
        resp = sync(fs.loop, fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=data, **cond)
    except Exception as exc:
        if _s3_refused(exc):
            raise _Conflict from exc
        raise
    fs.invalidate_cache(path)
    return resp["ETag"]


# -- gs:// (gcsfs, JSON API) -----------------------------------------------------------------------


def _gcs(store: CheckpointStore, *args, **kwargs):
    """One JSON-API request through the store's gcsfs client (its session, auth, retries)."""
    return sync(store.fs.loop, store.fs._call, *args, **kwargs)


def _gcs_read(store: CheckpointStore, path: str) -> Versioned:
    bucket, key, _ = store.fs.split_path(path)
    media = f"{store.fs._location}/download/storage/v1/b/{{}}/o/{{}}"
    try:
        headers, data = _gcs(store, "GET", media, bucket, key, alt="media")
        if headers.get("x-goog-generation"):
            return Versioned(data, str(headers["x-goog-generation"]))
        for _ in range(_GCS_READ_TRIES):  # no header: the metadata's generation, then pinned bytes
            meta = _gcs(store, "GET", "b/{}/o/{}", bucket, key, json_out=True)
            generation = str(meta["generation"])
            with contextlib.suppress(FileExistsError):  # 412: replaced in between; again
                _, data = _gcs(
                    store, "GET", media, bucket, key, alt="media", ifGenerationMatch=generation
                )
                return Versioned(data, generation)
    except FileNotFoundError:
        return _ABSENT
    # transient: store.retry reads again after a pause
    raise OSError(errno.EAGAIN, f"{path} was replaced during each of {_GCS_READ_TRIES} reads")


def _gcs_write(store: CheckpointStore, path: str, data: bytes, expected: str | None) -> str:
    bucket, key, _ = store.fs.split_path(path)
    upload = f"{store.fs._location}/upload/storage/v1/b/{{}}/o"
    octets = {"Content-Type": "application/octet-stream"}
    try:
        obj = _gcs(
            store, "POST", upload, bucket, uploadType="media", name=key,
            ifGenerationMatch=expected or "0", data=data, headers=octets, json_out=True,
        )  # fmt: skip
    except FileExistsError as exc:  # gcsfs's translation of 412 Precondition Failed
        raise _Conflict from exc
    store.fs.invalidate_cache(path)
    return str(obj["generation"])


# -- the API ---------------------------------------------------------------------------------------


def _backend(store: CheckpointStore) -> tuple[Callable[..., Versioned], Callable[..., str]]:
    """(read, write) for the store's filesystem."""
    if store._local:
        return _file_read, _file_write
    if isinstance(store.fs, MemoryFileSystem):
        return _memory_read, _memory_write
    protocols = store.fs.protocol
    protocols = {protocols} if isinstance(protocols, str) else set(protocols)
    if protocols & {"s3", "s3a"}:
        return _s3_read, _s3_write
    if protocols & {"gs", "gcs"}:
        return _gcs_read, _gcs_write
    raise ConfigError(
        f"{store.uri}: compare-and-swap writes (the attempt ledger) need a file://, memory://, "
        f"s3:// or gs:// store, not {type(store.fs).__name__}"
    )


def _failed(store: CheckpointStore, relpath: str, doing: str, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not {doing} {store.uri}/{relpath} ({store.retry.attempts} tries): "
        f"{type(exc).__name__}: {exc}; check permissions and the store's availability, then retry"
    )


def read_versioned(store: CheckpointStore, relpath: str) -> Versioned:
    """The bytes of ``relpath`` (relative to the store's root) and their version, read together;
    ``Versioned(None, None)`` if the object does not exist."""
    path = store._path(check_name(relpath, what="object path"))
    read, _ = _backend(store)
    try:
        return store.retry.call(lambda: read(store, path), what=path)
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise _failed(store, relpath, "read", exc) from exc


def write_if(store: CheckpointStore, relpath: str, data: bytes, *, expected: str | None) -> str:
    """Write only if the object is still at version `expected` (None: only if it does not exist);
    returns the new version.

    Raises WriteConflictError when another writer changed (or created, or deleted) the object
    since it was read; nothing is written then and the call is not retried: re-read with
    :func:`read_versioned`, re-apply the change and call again. Other storage failures, after
    ``store.retry``'s tries, raise CheckpointError.
    """
    if expected is not None and not isinstance(expected, str):
        raise ConfigError(f"expected version must be a str or None, got {expected!r}")
    path = store._path(check_name(relpath, what="object path"))
    _, write = _backend(store)
    body = bytes(data)
    try:
        return store.retry.call(lambda: write(store, path, body, expected), what=path)
    except _Conflict as exc:
        state = "absent" if expected is None else f"at version {expected}"
        raise WriteConflictError(
            f"{store.uri}/{relpath} was changed by another writer since it was read (expected it "
            f"{state}); nothing was written: re-read it and apply the change again"
        ) from exc.__cause__
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise _failed(store, relpath, "write", exc) from exc
