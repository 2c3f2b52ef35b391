"""The package's one retry helper: a small vocabulary on top of tenacity.

Every retry loop in spot-workflows (checkpoint-store I/O, AWS calls, GCP calls, a trigger's
describe) is built here, so they all mean the same thing by their numbers:

- :class:`Backoff` says *how* to retry: at most ``attempts`` tries, capped exponential waits
  (``min(cap_s, base_s * 2**(n-1))`` before retry ``n``, 1-based) with full jitter unless
  ``jitter`` is off, and, optionally, no wait that would end past ``total_s`` seconds after the
  first try.
- *Whether* an error is worth retrying is a separate predicate that each caller owns (botocore
  throttling, google.api_core ``UNAVAILABLE``, object-store 5xx ...): :func:`retrying` only runs
  the loop. An error the predicate rejects is raised at once; when the tries or the time run
  out, the last error is raised as it was (``reraise=True``), for the caller to translate.

Each retry logs one line: ``transient <kind> error on <what> (try i of n): <Error>: <text>;
retrying in <s>s``. This module imports no cloud SDK.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity
from tenacity import RetryCallState

from spot_workflows.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger("spot_workflows.retry")


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """How to retry: ``attempts`` tries at most, waits capped at ``cap_s``, never past
    ``total_s`` seconds after the first try (None: no time bound), full jitter unless off."""

    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 20.0
    total_s: float | None = None
    jitter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigError(f"retry attempts must be an integer >= 1, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be an integer >= 1, got {self.attempts}")
        if not 0 <= self.base_s <= self.cap_s:
            raise ConfigError(
                f"retry backoff needs 0 <= base_s <= cap_s, got base_s={self.base_s} "
                f"cap_s={self.cap_s}"
            )
        if self.total_s is not None and not self.total_s > 0:
            raise ConfigError(f"retry total_s must be > 0 seconds or None, got {self.total_s}")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1-based): ``min(cap_s, base_s *
        2**(retry-1))``; with jitter the wait is uniform in ``[0, ceiling]``."""
        return min(self.cap_s, self.base_s * 2 ** max(0, retry - 1))

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """A wait before retry ``retry`` (1-based), as the loop draws it."""
        top = self.ceiling(retry)
        return rng() * top if self.jitter else top

    @property
    def max_total_s(self) -> float:
        """Upper bound on the seconds slept by one call whose every try fails."""
        slept = sum(self.ceiling(n) for n in range(1, self.attempts))
        return slept if self.total_s is None else min(slept, self.total_s)


class _FullJitter(tenacity.wait_random_exponential):
    """tenacity's full-jitter wait, drawing from an injectable ``rng`` (tests seed it)."""

    def __init__(self, backoff: Backoff, rng: Callable[[], float]) -> None:
        super().__init__(multiplier=backoff.base_s, max=backoff.cap_s, exp_base=2)
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        high = tenacity.wait_exponential.__call__(self, retry_state)
        return self.min + self.rng() * (high - self.min)


class _Deadline(tenacity.stop.stop_base):
    """Stop before a wait that would end more than ``total_s`` after the first try began
    (measured on ``clock``, so a test's fake clock and sleep make it deterministic)."""

    def __init__(self, total_s: float, clock: Callable[[], float]) -> None:
        self.total_s, self.clock, self.start = total_s, clock, clock()

    def begin(self, retry_state: RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            self.start = self.clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        elapsed = self.clock() - self.start
        return elapsed + retry_state.upcoming_sleep > self.total_s


def _log_retry(
    logger: Any, what: str, kind: str, attempts: int
) -> Callable[[RetryCallState], None]:
    def before_sleep(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        logger.warning(
            "transient %s error on %s (try %d of %d): %s: %s; retrying in %.2fs",
            kind,
            what,
            rs.attempt_number,
            attempts,
            type(exc).__name__,
            exc,
            rs.upcoming_sleep,
        )

    return before_sleep


def _options(
    backoff: Backoff,
    retry_if: Callable[[BaseException], bool],
    *,
    what: str,
    kind: str,
    logger: Any,
    rng: Callable[[], float] | None,
    clock: Callable[[], float] | None,
    on_retry: Callable[[RetryCallState], Any] | None,
) -> dict[str, Any]:
    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(backoff.attempts)
    before = None
    if backoff.total_s is not None:
        deadline = _Deadline(backoff.total_s, clock or time.monotonic)
        stop, before = stop | deadline, deadline.begin
    if backoff.jitter:
        wait: tenacity.wait.wait_base = _FullJitter(backoff, rng or random.random)
    else:
        wait = tenacity.wait_exponential(multiplier=backoff.base_s, max=backoff.cap_s)
    log_line = _log_retry(logger or log, what, kind, backoff.attempts)

    def before_sleep(rs: RetryCallState) -> None:
        log_line(rs)
        if on_retry is not None:
            on_retry(rs)

    return {
        "retry": tenacity.retry_if_exception(retry_if),
        "stop": stop,
        "wait": wait,
        "before": before,
        "before_sleep": before_sleep,
        "reraise": True,
    }


def retrying(
    backoff: Backoff,
    retry_if: Callable[[BaseException], bool],
    *,
    what: str,
    kind: str = "",
    sleep: Callable[[float], None] = time.sleep,
    logger: Any = None,
    rng: Callable[[], float] | None = None,
    clock: Callable[[], float] | None = None,
    on_retry: Callable[[RetryCallState], Any] | None = None,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` for one call: retries the errors ``retry_if`` accepts, as
    ``backoff`` says; anything else, or the last error, is raised unchanged.

    ``what`` and ``kind`` name the operation in the retry log line (``transient storage error on
    bucket/key ...``); ``sleep``, ``rng`` (a ``random.random``) and ``clock`` (for ``total_s``)
    are injectable, so tests never wait; ``logger`` (default ``spot_workflows.retry``) is any
    logger with ``warning(fmt, *args)``; ``on_retry`` runs before each wait."""
    opts = _options(
        backoff,
        retry_if,
        what=what,
        kind=kind or "call",
        logger=logger,
        rng=rng,
        clock=clock,
        on_retry=on_retry,
    )
    return tenacity.Retrying(sleep=sleep, **opts)


def call(
    fn: Callable[[], T],
    backoff: Backoff,
    retry_if: Callable[[BaseException], bool],
    *,
    what: str,
    kind: str = "",
    sleep: Callable[[float], None] = time.sleep,
    **kw: Any,
) -> T:
    """``fn()`` under :func:`retrying` (same arguments)."""
    return retrying(backoff, retry_if, what=what, kind=kind, sleep=sleep, **kw)(fn)


def async_retrying(
    backoff: Backoff,
    retry_if: Callable[[BaseException], bool],
    *,
    what: str,
    kind: str = "",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    logger: Any = None,
    rng: Callable[[], float] | None = None,
    clock: Callable[[], float] | None = None,
    on_retry: Callable[[RetryCallState], Any] | None = None,
) -> tenacity.AsyncRetrying:
    """:func:`retrying` for coroutines (``tenacity.AsyncRetrying``, awaiting ``sleep``)."""
    opts = _options(
        backoff,
        retry_if,
        what=what,
        kind=kind or "call",
        logger=logger,
        rng=rng,
        clock=clock,
        on_retry=on_retry,
    )
    return tenacity.AsyncRetrying(sleep=sleep, **opts)
