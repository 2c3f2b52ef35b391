"""Checksums of checkpoint files, named in the manifest next to each file's size.

* ``sha256``: the synchronous Checkpointer's files (small, hashed once).
* ``crc32c``: the async checkpointer's shards by default. It is the checksum GCS keeps for every
  object and one S3 offers; the C implementation (``google-crc32c``, SSE4.2/ARMv8 CRC
  instructions) runs at ~4 GB/s per core including a copy into ``bytes`` (it accepts nothing
  else), where sha256 manages ~1 GB/s, so hashing stops being what bounds a multi-GB persist. It detects every burst error up to 32 bits and any other
  corruption with probability 1 - 2**-32; it is not a defence against deliberate tampering (use
  ``checksum="sha256"`` for that, or rely on the bucket's own integrity controls).

Every hasher takes buffer pieces through ``update`` and gives lowercase hex from ``hexdigest``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from spot_workflows.errors import ConfigError

ALGORITHMS = ("sha256", "crc32c")


class Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc32c:
    PIECE = 4 * 1024 * 1024
    """google-crc32c takes only ``bytes`` (and releases the GIL for pieces >= 1 MiB), so buffers
    go through in copies of this size: a memcpy costs far less than the CRC saves over sha256."""

    def __init__(self) -> None:
        import google_crc32c

        self._crc, self._extend = 0, google_crc32c.extend

    def update(self, data: Any) -> None:
        if isinstance(data, bytes):
            self._crc = self._extend(self._crc, data)
            return
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, self.PIECE):
            self._crc = self._extend(self._crc, bytes(view[start : start + self.PIECE]))

    def hexdigest(self) -> str:
        return f"{self._crc:08x}"


def crc32c_is_fast() -> bool:
    """True where ``google-crc32c`` has its C extension (its pure-Python fallback is slower
    than sha256, so the async checkpointer then uses sha256)."""
    try:
        import google_crc32c
    except ImportError:
        return False
    return google_crc32c.implementation == "c"


def fastest() -> str:
    """The default checksum for large shards: crc32c where it is fast, else sha256."""
    return "crc32c" if crc32c_is_fast() else "sha256"


def check(algorithm: object) -> str:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"checksum must be one of {', '.join(ALGORITHMS)}; got {algorithm!r}")
    return str(algorithm)


def new(algorithm: str) -> Hasher:
    """A fresh hasher for ``algorithm`` (``sha256`` or ``crc32c``)."""
    if check(algorithm) == "crc32c":
        return _Crc32c()
    return hashlib.sha256()


def of(data: Any, algorithm: str, chunk: int = 8 * 1024 * 1024) -> str:
    """Hex checksum of a bytes-like ``data``, fed in ``chunk`` pieces so a thread beside it can
    take the GIL between pieces."""
    view = memoryview(data).cast("B")
    hasher = new(algorithm)
    for start in range(0, view.nbytes, chunk):
        hasher.update(view[start : start + chunk])
    return hasher.hexdigest()
