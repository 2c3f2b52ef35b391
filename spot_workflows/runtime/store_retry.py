"""Bounded retries for checkpoint-store I/O: object stores throttle (S3 ``SlowDown``, GCS 429) and
drop connections, and one such blip must not cost a checkpoint.

:class:`RetryPolicy` retries *transient* storage errors (throttling, 5xx, connection resets,
timeouts) with capped exponential backoff and full jitter; errors that will not go away by
waiting (missing object, access denied, disk full, read-only file system) fail at once. Object
PUTs are idempotent, so retrying one whole object write is safe.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger("spot_workflows.checkpoint")

T = TypeVar("T")

_PERMANENT_OS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_PERMANENT_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_SDK_MODULES = ("gcsfs", "google", "botocore", "aiobotocore", "aiohttp", "requests", "urllib3")


def is_storage_error(exc: BaseException) -> bool:
    """An error raised by the storage layer (fsspec, s3fs, gcsfs, their HTTP clients)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith(_SDK_MODULES)


def is_transient(exc: BaseException) -> bool:
    """True for storage errors that may succeed when retried (throttling, 5xx, resets)."""
    if isinstance(exc, _PERMANENT_OS):
        return False
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNO
    code = getattr(exc, "code", None)  # gcsfs.retry.HttpError and friends carry the HTTP status
    if isinstance(code, int | str) and str(code).isdigit():
        return int(code) in _TRANSIENT_HTTP
    return is_storage_error(exc)  # connection-level errors of the HTTP clients


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """``attempts`` tries per object; waits ``min(max_s, base_s * 2**n)`` with full jitter.

    The worst-case time spent waiting for one object is bounded by ``max_total_s``.
    """

    attempts: int = 5
    base_s: float = 0.2
    max_s: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ValueError(f"retry attempts must be an integer >= 1, got {self.attempts!r}")
        if self.attempts < 1 or not 0 <= self.base_s <= self.max_s:
            raise ValueError(
                f"retry policy needs attempts >= 1 and 0 <= base_s <= max_s, got {self!r}"
            )

    @property
    def max_total_s(self) -> float:
        """Upper bound on the seconds slept for one object (every try failing)."""
        return sum(min(self.max_s, self.base_s * 2**n) for n in range(self.attempts - 1))

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): jittered, capped."""
        return self.rng.uniform(0, min(self.max_s, self.base_s * 2**retry))

    def call(self, fn: Callable[[], T], *, what: str, retry: bool = True) -> T:
        """``fn()``, retrying transient storage errors; the last error propagates."""
        tries = self.attempts if retry else 1
        for n in range(tries):
            try:
                return fn()
            except Exception as exc:
                if n + 1 >= tries or not (is_storage_error(exc) and is_transient(exc)):
                    raise
                wait = self.delay(n)
                log.warning(
                    "transient storage error on %s (try %d of %d): %s: %s; retrying in %.2fs",
                    what,
                    n + 1,
                    tries,
                    type(exc).__name__,
                    exc,
                    wait,
                )
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


NO_RETRY = RetryPolicy(attempts=1)
