"""Test-only fault injection: SIGKILL this process at a named point of a checkpoint store write.

Off unless ``SPOT_WORKFLOWS_FAULT`` is set (never set it in production). The reliability suite
(``tests/reliability``, ``bench/fault_injection.py``) uses it to kill a worker or an orchestrator
at an exact point instead of hoping a timer lands there. Syntax: ``POINT:N[@ATTEMPT]``, several
separated by commas: die the ``N``-th time this process reaches ``POINT`` (only in attempt
``ATTEMPT``, read from ``SPOT_ATTEMPT``, when given). Points:

* ``data``: halfway through writing a checkpoint data file (half the bytes are on disk);
* ``staged``: every data file of a save written, none moved into place yet;
* ``manifest``: halfway through writing ``step-<N>/manifest.json``;
* ``latest``: halfway through writing ``latest.json`` (the checkpoint is already visible);
* ``tidy``: after ``latest.json``, before tidying and pruning old checkpoints;
* ``ledger``: halfway through writing the attempt ledger (``ledger.json``).

The kill is a real ``SIGKILL`` of the calling process: no handler, no cleanup, no flush.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import signal
from typing import IO

ENV = "SPOT_WORKFLOWS_FAULT"
POINTS = ("data", "staged", "manifest", "latest", "tidy", "ledger")
_SPEC = re.compile(r"(?P<point>[a-z]+):(?P<n>\d+)(?:@(?P<attempt>\d+))?")
_seen: dict[str, int] = {}


def _armed(point: str) -> bool:
    """Count one arrival at ``point``; True when a fault in ``SPOT_WORKFLOWS_FAULT`` fires."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    n = _seen[point] = _seen.get(point, 0) + 1
    for part in spec.split(","):
        m = _SPEC.fullmatch(part.strip())
        if m is None or m["point"] not in POINTS:
            raise ValueError(f"{ENV}={spec!r}: expected POINT:N[@ATTEMPT], POINT in {POINTS}")
        if m["point"] != point or int(m["n"]) != n:
            continue
        if m["attempt"] is None or m["attempt"] == os.environ.get("SPOT_ATTEMPT"):
            return True
    return False


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def reached(point: str) -> None:
    """A named point between writes (``staged``, ``tidy``)."""
    if _armed(point):
        _die()


def _kind(out: IO[bytes]) -> str:
    base = posixpath.basename(str(getattr(out, "name", "") or getattr(out, "path", "")))
    for name in ("manifest", "latest", "ledger"):
        if base == f"{name}.json" or base.endswith(f"-{name}.json"):
            return name
    return "data"


def writing_fd(fd: int, piece: bytes | memoryview) -> None:
    """Like :func:`writing`, for the async writer's raw file-descriptor writes (``data``)."""
    if os.environ.get(ENV) and _armed("data"):
        with contextlib.suppress(OSError):  # O_DIRECT may refuse an unaligned half
            os.write(fd, piece[: len(piece) // 2])
        _die()


def writing(out: IO[bytes], chunk: bytes) -> None:
    """Called before each chunk a store writes; may write half of it and die."""
    if os.environ.get(ENV) and _armed(_kind(out)):
        out.write(chunk[: len(chunk) // 2])
        out.flush()
        _die()
