"""Large writes and verified reads of checkpoint shards held in memory.

* Local disks: big sequential ``O_DIRECT`` writes straight from the page-aligned host buffer (no
  page-cache copy; falls back to buffered writes where the file system refuses ``O_DIRECT``),
  then ``fsync``. The checksum (``digests.py``: crc32c or sha256) is computed by a second
  thread while the first one writes.
* S3 (s3fs): a multipart upload whose parts go up in parallel.
* GCS (gcsfs): a parallel composite upload: parts uploaded in parallel as temporary objects, then
  composed into the final object (at most 32 parts) and deleted.
* Any other fsspec file system: one streamed write.

Every writer returns ``(size, checksum)`` of what it wrote and stops early (raising
:class:`WriteCancelled`) when ``cancelled()`` turns true between two chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import threading
from collections.abc import Callable
from typing import Any

from spot_workflows.errors import CheckpointError
from spot_workflows.runtime.store import digests, faults

CHUNK = 64 * 1024 * 1024
"""Bytes per write call and per uploaded part."""
GCS_MAX_COMPOSE = 32


class WriteCancelled(CheckpointError):
    """A background write was abandoned (a newer snapshot supersedes it)."""


def _never() -> bool:
    return False


class _Hasher(threading.Thread):
    """Checksums ``view`` beside the writer thread (sha256 releases the GIL; crc32c holds it
    only a millisecond per 8 MiB piece)."""

    def __init__(self, view: memoryview, algorithm: str) -> None:
        super().__init__(daemon=True, name=f"spot-ckpt-{algorithm}")
        self.view, self.algorithm, self.digest, self.error = view, algorithm, "", None

    def run(self) -> None:
        try:
            self.digest = digests.of(self.view, self.algorithm)
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        return self.digest


def _open_direct(path: str) -> tuple[int, bool]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        with contextlib.suppress(OSError):  # EINVAL on tmpfs and some overlay file systems
            return os.open(path, flags | direct, 0o644), True
    return os.open(path, flags, 0o644), False


def write_local(
    path: str,
    view: memoryview,
    *,
    direct: bool = True,
    cancelled: Callable[[], bool] = _never,
    chunk: int = CHUNK,
    algorithm: str = "sha256",
) -> tuple[int, str]:
    """Write ``view`` to local ``path`` and fsync it; ``direct`` needs a page-aligned view whose
    size is a multiple of 4 KiB (the snapshot's shards are)."""
    os.makedirs(posixpath.dirname(path), exist_ok=True)
    hasher = _Hasher(view, digests.check(algorithm))
    hasher.start()
    try:
        _write_fd(path, view, direct=direct, cancelled=cancelled, chunk=chunk)
    except OSError as exc:
        if not direct or exc.errno != errno.EINVAL:
            raise
        _write_fd(path, view, direct=False, cancelled=cancelled, chunk=chunk)  # unaligned
    return view.nbytes, hasher.result()


def _write_fd(
    path: str, view: memoryview, *, direct: bool, cancelled: Callable[[], bool], chunk: int
) -> None:
    if direct:
        fd, _ = _open_direct(path)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        done = 0
        while done < view.nbytes:
            if cancelled():
                raise WriteCancelled(f"write of {path} cancelled after {done} bytes")
            faults.writing_fd(fd, view[done : done + chunk])  # test-only; no-op unless armed
            done += os.write(fd, view[done : done + chunk])
        os.fsync(fd)
    finally:
        os.close(fd)


def upload(
    fs: Any,
    path: str,
    view: memoryview,
    *,
    workers: int = 8,
    part_bytes: int = CHUNK,
    cancelled: Callable[[], bool] = _never,
    algorithm: str = "sha256",
) -> tuple[int, str]:
    """Upload ``view`` to ``path`` on an fsspec file system, in parallel parts where it can."""
    hasher = _Hasher(view, digests.check(algorithm))
    hasher.start()
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if view.nbytes <= part_bytes:
        fs.pipe_file(path, bytes(view))
    elif {"s3", "s3a"} & set(protocols):
        _s3_multipart(fs, path, view, workers, part_bytes, cancelled)
    elif {"gs", "gcs"} & set(protocols):
        _gcs_composite(fs, path, view, workers, part_bytes, cancelled)
    else:
        with fs.open(path, "wb") as f:
            for start in range(0, view.nbytes, part_bytes):
                if cancelled():
                    raise WriteCancelled(f"upload of {path} cancelled")
                f.write(view[start : start + part_bytes])
    return view.nbytes, hasher.result()


def _ranges(size: int, part: int) -> list[tuple[int, int]]:
    return [(a, min(a + part, size)) for a in range(0, size, part)]


async def _gather_limited(coros: list[Any], workers: int) -> list[Any]:
    gate = asyncio.Semaphore(max(1, workers))

    async def run(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def _s3_multipart(
    fs: Any, path: str, view: memoryview, workers: int, part: int, cancelled: Callable[[], bool]
) -> None:
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    part = max(part, 5 * 1024 * 1024, -(-view.nbytes // 10_000))  # S3: >= 5 MiB, <= 10,000 parts

    async def go() -> None:
        mpu = await fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        uid = mpu["UploadId"]

        async def put(n: int, a: int, b: int) -> dict[str, Any]:
            if cancelled():
                raise WriteCancelled(f"upload of {path} cancelled")
            out = await fs._call_s3(
                "upload_part",
                Bucket=bucket,
                Key=key,
                UploadId=uid,
                PartNumber=n,
                Body=bytes(view[a:b]),
            )
            return {"PartNumber": n, "ETag": out["ETag"]}

        try:
            parts = await _gather_limited(
                [put(n, a, b) for n, (a, b) in enumerate(_ranges(view.nbytes, part), 1)], workers
            )
            await fs._call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=uid,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=uid)
            raise

    sync(fs.loop, go)
    fs.invalidate_cache(path)


def _gcs_composite(
    fs: Any, path: str, view: memoryview, workers: int, part: int, cancelled: Callable[[], bool]
) -> None:
    from fsspec.asyn import sync

    part = max(part, -(-view.nbytes // GCS_MAX_COMPOSE))
    names = [f"{path}.part-{i:02d}" for i in range(len(_ranges(view.nbytes, part)))]

    async def go() -> None:
        async def put(name: str, a: int, b: int) -> None:
            if cancelled():
                raise WriteCancelled(f"upload of {path} cancelled")
            await fs._pipe_file(name, bytes(view[a:b]))

        try:
            await _gather_limited(
                [put(n, a, b) for n, (a, b) in zip(names, _ranges(view.nbytes, part), strict=True)],
                workers,
            )
            await fs._merge(path, names)
        finally:
            for name in names:
                with contextlib.suppress(Exception):
                    await fs._rm_file(name)

    sync(fs.loop, go)
    fs.invalidate_cache(path)


def read_into(
    fs: Any, path: str, out: memoryview, *, local: bool, algorithm: str = "sha256"
) -> str:
    """Read the object at ``path`` into ``out`` (its exact size); returns the checksum of what
    was read. Raises FileNotFoundError, or CheckpointError when the object's size differs."""
    digest = digests.new(algorithm)
    done = 0
    with open(path, "rb", buffering=0) if local else fs.open(path, "rb", block_size=CHUNK) as f:
        while done < out.nbytes:
            n = f.readinto(out[done : done + CHUNK])
            if not n:
                break
            digest.update(out[done : done + n])
            done += n
        if done != out.nbytes or f.read(1):
            raise CheckpointError(f"{path} is not {out.nbytes} bytes long")
    return digest.hexdigest()
