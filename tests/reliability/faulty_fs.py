"""A failing fsspec layer: wraps a real filesystem (memory, s3fs on moto, gcsfs on the emulator)
and raises the errors those stacks raise (S3 ``SlowDown`` as s3fs translates it, GCS 429/503 as
gcsfs's ``HttpError``, connection resets, access denied) on chosen operations and paths."""

from __future__ import annotations

import errno
import io
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gcsfs.retry import HttpError


def s3_slowdown() -> OSError:
    return OSError(errno.EBUSY, "An error occurred (SlowDown) when calling the PutObject operation")


def s3_internal() -> OSError:
    return OSError(errno.EREMOTEIO, "An error occurred (InternalError): We encountered an error")


def gcs_throttled() -> HttpError:
    return HttpError({"code": 429, "message": "The rate of change requests is too high"})


def gcs_unavailable() -> HttpError:
    return HttpError({"code": 503, "message": "Backend Error"})


def connection_reset() -> ConnectionResetError:
    return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def access_denied() -> PermissionError:
    return PermissionError(errno.EACCES, "An error occurred (AccessDenied)")


TRANSIENT = (s3_slowdown, s3_internal, gcs_throttled, gcs_unavailable, connection_reset)


@dataclass
class Fault:
    op: str  # "write" (an object upload: open-for-write or pipe_file) or "read" (cat_file)
    path: str  # regex searched in the object path
    times: int | None  # None: every time
    make: Callable[[], BaseException]


@dataclass
class Faults:
    rules: list[Fault] = field(default_factory=list)
    rate: float = 0.0  # random transient faults on every write/read, seeded
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    injected: int = 0
    calls: list[tuple[str, str]] = field(default_factory=list)

    def add(self, op: str, path: str, make: Callable[[], BaseException], times: int | None = 1):
        self.rules.append(Fault(op, path, times, make))

    def check(self, op: str, path: str) -> None:
        self.calls.append((op, path))
        for rule in self.rules:
            if rule.op == op and re.search(rule.path, path) and rule.times != 0:
                if rule.times is not None:
                    rule.times -= 1
                self.injected += 1
                raise rule.make()
        if self.rate and self.rng.random() < self.rate:
            self.injected += 1
            raise self.rng.choice(TRANSIENT)()

    def count(self, op: str, path: str = "") -> int:
        return sum(1 for o, p in self.calls if o == op and re.search(path, p))


class _Upload(io.BytesIO):
    """Buffers a write; the upload happens (or fails) at close, as on S3 and GCS."""

    def __init__(self, fs: FaultyFS, path: str) -> None:
        super().__init__()
        self._fs, self._path = fs, path

    def close(self) -> None:
        if self.closed:
            return
        data = self.getvalue()
        super().close()
        self._fs.faults.check("write", self._path)
        self._fs.inner.pipe_file(self._path, data)


class FaultyFS:
    """Delegates everything to ``inner``; uploads and reads go through ``faults`` first."""

    def __init__(self, inner: Any, faults: Faults) -> None:
        self.inner, self.faults = inner, faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if "w" in mode:
            return _Upload(self, path)
        return self.inner.open(path, mode, **kw)

    def pipe_file(self, path: str, data: bytes, **kw: Any) -> None:
        self.faults.check("write", path)
        self.inner.pipe_file(path, data, **kw)

    def cat_file(self, path: str, **kw: Any) -> bytes:
        self.faults.check("read", path)
        return self.inner.cat_file(path, **kw)
