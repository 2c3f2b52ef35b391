"""Reusable, page-aligned host memory for checkpoint snapshots.

A snapshot copies the training state into host memory so the training loop can go on while a
background thread writes it. Allocating (and page-faulting) gigabytes for every save would cost
more than the copy itself, so the buffer is kept and reused: it only grows.

* With CUDA available (and ``pin`` not False) the buffer is **pinned** (page-locked) memory from
  ``torch.empty(pin_memory=True)``: device-to-host copies into it run at full PCIe/NVLink speed and
  asynchronously on a side stream.
* Otherwise it is an anonymous ``mmap`` (page-aligned, pre-faulted with ``MAP_POPULATE``): plain
  memory copies for CPU tensors, numpy arrays and bytes, no torch needed.

Page alignment lets the writer use ``O_DIRECT`` on local disks.
"""

from __future__ import annotations

import logging
import mmap
import sys
from typing import Any

log = logging.getLogger("spot_workflows.checkpoint")

ALIGN = 4096
"""Alignment of the buffer start and of every shard inside it (O_DIRECT needs the block size)."""
_GROW = 64 * 1024 * 1024  # round allocations up to 64 MiB, so small growth reuses the buffer


def align_up(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def cuda_available() -> bool:
    """True when torch is imported and sees a CUDA device (never imports torch itself)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


class HostBuffer:
    """One contiguous, page-aligned host allocation of ``nbytes`` bytes."""

    def __init__(self, nbytes: int, *, pinned: bool) -> None:
        self.nbytes = nbytes
        self.pinned = pinned
        self._mmap: mmap.mmap | None = None
        self._tensor: Any = None  # torch uint8 view over the whole buffer, made on demand
        if pinned:
            import torch

            raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8, pin_memory=True)
            skip = (-raw.data_ptr()) % ALIGN
            self._tensor = raw[skip : skip + nbytes]
            self._view = memoryview(self._tensor.numpy()).cast("B")
        else:
            flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20)
            flags |= getattr(mmap, "MAP_POPULATE", 0)  # fault the pages in now, not in the copy
            self._mmap = mmap.mmap(-1, max(nbytes, 1), flags=flags)
            self._view = memoryview(self._mmap)[:nbytes]

    def view(self, start: int = 0, stop: int | None = None) -> memoryview:
        """A writable byte view of ``[start, stop)``; no copy."""
        return self._view[start : self.nbytes if stop is None else stop]

    def tensor(self) -> Any:
        """The whole buffer as a torch uint8 tensor sharing its memory (imports torch)."""
        if self._tensor is None:
            import torch

            self._tensor = torch.frombuffer(self._mmap, dtype=torch.uint8, count=self.nbytes)
        return self._tensor


class HostBufferPool:
    """Hands out one reusable :class:`HostBuffer` that grows to the largest snapshot seen.

    ``pin``: None pins when CUDA is available; True requires CUDA; False never pins.
    Only one snapshot uses the buffer at a time: the writer keeps at most one save in flight.
    """

    def __init__(self, *, pin: bool | None = None) -> None:
        self.pin = pin
        self._buffer: HostBuffer | None = None

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes if self._buffer is not None else 0

    def get(self, nbytes: int) -> HostBuffer:
        """A buffer of at least ``nbytes`` bytes (the previous one when it is large enough)."""
        if self._buffer is not None and self._buffer.nbytes >= nbytes:
            return self._buffer
        pinned = cuda_available() if self.pin is None else self.pin
        size = align_up(max(nbytes, 1), _GROW)
        self._buffer = None  # let the old one go before allocating the new one
        log.debug("allocating a %.2f GB %s host buffer", size / 1e9, "pinned" if pinned else "")
        self._buffer = HostBuffer(size, pinned=pinned)
        return self._buffer

    def release(self) -> None:
        """Drop the buffer (it is allocated again by the next :meth:`get`)."""
        self._buffer = None
