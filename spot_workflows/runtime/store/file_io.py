"""Byte plumbing for the checkpoint store: chunked reads, hashed copies, directory fsync."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from spot_workflows.runtime.store import digests, faults

CHUNK = 4 * 1024 * 1024


def chunks(value: bytes | Path) -> Iterator[bytes]:
    """The bytes of ``value`` (bytes, or a local file read in ``CHUNK`` pieces)."""
    if isinstance(value, bytes):
        yield value
        return
    with open(value, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def copy_hashed(
    pieces: Iterable[bytes], out: IO[bytes], algorithm: str = "sha256"
) -> tuple[int, str]:
    """Write ``pieces`` to ``out``; return (size, hex checksum by ``algorithm``)."""
    digest, size = digests.new(algorithm), 0
    for chunk in pieces:
        faults.writing(out, chunk)  # test-only fault injection; a no-op unless armed
        out.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def fsync_dir(path: str) -> None:
    """Make a rename in local directory ``path`` durable (best effort; no-op elsewhere)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
