"""Bounded retries for checkpoint-store I/O: object stores throttle (S3 ``SlowDown``, GCS 429) and
drop connections, and one such blip must not cost a checkpoint.

:class:`RetryPolicy` retries *transient* storage errors (throttling, 5xx, connection resets,
timeouts) with capped exponential backoff and full jitter, through the package's one retry
helper (:mod:`spot_workflows.retrying`); errors that will not go away by waiting (missing object,
access denied, disk full, read-only file system) fail at once. Object PUTs are idempotent, so
retrying one whole object write is safe.

Missing, invalid or expired credentials are never retried: :meth:`RetryPolicy.call` raises them
at once as a :class:`~spot_workflows.errors.CredentialsError` that says how to provide them.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from spot_workflows import retrying
from spot_workflows.errors import ConfigError, CredentialsError

log = logging.getLogger("spot_workflows.checkpoint")

T = TypeVar("T")

_PERMANENT_OS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_PERMANENT_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
_SDK_MODULES = ("gcsfs", "google", "botocore", "aiobotocore", "aiohttp", "requests", "urllib3")

_AWS_CREDENTIAL_ERRORS = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "NoAuthTokenError",
    }
)
_GOOGLE_CREDENTIAL_ERRORS = frozenset({"DefaultCredentialsError", "RefreshError"})
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "InvalidSecurity",
        "AuthFailure",
        "RequestExpired",
    }
)
"""S3 / STS error codes that mean the credentials themselves are wrong (not the permissions)."""

AWS_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
    "credentials) or AWS_PROFILE, run with an instance/task role, or pass the store "
    "storage_options={'key': ..., 'secret': ...}"
)
GCP_CREDENTIALS_HELP = (
    "run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file, run with an attached service account, or pass the store "
    "storage_options={'token': ...}"
)


def is_storage_error(exc: BaseException) -> bool:
    """An error raised by the storage layer (fsspec, s3fs, gcsfs, their HTTP clients)."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith(_SDK_MODULES)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it wraps (s3fs turns a ClientError into a PermissionError)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(seen) < 8 and all(cur is not s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _credentials_cause(exc: BaseException) -> tuple[str, str] | None:
    """(cloud, reason) when ``exc`` says the credentials are missing or rejected, else None.
    ``reason`` is an error class name and code, never the error's text (no secrets)."""
    for err in _chain(exc):
        module, names = type(err).__module__, {c.__name__ for c in type(err).__mro__}
        if module.startswith(("botocore", "aiobotocore")):
            if names & _AWS_CREDENTIAL_ERRORS:
                return "aws", type(err).__name__
            code = str(getattr(err, "response", {}).get("Error", {}).get("Code") or "")
            if code in CREDENTIAL_CODES:
                return "aws", f"{type(err).__name__} {code}"
        elif module.startswith("google.auth") and names & _GOOGLE_CREDENTIAL_ERRORS:
            if not getattr(err, "retryable", False):
                return "gcp", type(err).__name__
        elif module.startswith("gcsfs") and str(getattr(err, "code", "")) == "401":
            return "gcp", f"{type(err).__name__} 401"
    return None


def is_credentials_error(exc: BaseException) -> bool:
    """Missing, invalid or expired cloud credentials: waiting will not fix them."""
    return _credentials_cause(exc) is not None


def credentials_error(exc: BaseException, what: str) -> CredentialsError:
    """The one-line :class:`CredentialsError` for a storage call on ``what`` that failed for
    want of usable credentials (``exc``: see :func:`is_credentials_error`)."""
    cloud, reason = _credentials_cause(exc) or ("aws", type(exc).__name__)
    if cloud == "gcp":
        return CredentialsError(
            f"no usable Google Cloud credentials for the checkpoint store ({what}: {reason}); "
            f"{GCP_CREDENTIALS_HELP}"
        )
    return CredentialsError(
        f"no usable AWS credentials for the checkpoint store ({what}: {reason}); "
        f"{AWS_CREDENTIALS_HELP}"
    )


def is_transient(exc: BaseException) -> bool:
    """True for storage errors that may succeed when retried (throttling, 5xx, resets);
    never for missing or rejected credentials."""
    if is_credentials_error(exc):
        return False
    if isinstance(exc, _PERMANENT_OS):
        return False
    if isinstance(exc, OSError):
        if str(exc).startswith("Forbidden"):  # gcsfs's HTTP 403: no permission, not a blip
            return False
        return exc.errno not in _PERMANENT_ERRNO
    code = getattr(exc, "code", None)  # gcsfs.retry.HttpError and friends carry the HTTP status
    if isinstance(code, int | str) and str(code).isdigit():
        return int(code) in _TRANSIENT_HTTP
    return is_storage_error(exc)  # connection-level errors of the HTTP clients


def should_retry(exc: BaseException) -> bool:
    """The storage retry decision: a transient error of the storage layer."""
    return is_storage_error(exc) and is_transient(exc)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """``attempts`` tries per object; waits ``min(max_s, base_s * 2**n)`` with full jitter
    (:class:`~spot_workflows.retrying.Backoff` with ``cap_s=max_s``).

    The worst-case time spent waiting for one object is bounded by ``max_total_s`` (and by
    ``total_s`` when set).
    """

    attempts: int = 5
    base_s: float = 0.2
    max_s: float = 5.0
    total_s: float | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            _ = self.backoff  # validates the numbers
        except ConfigError as exc:  # a ValueError: say it in this policy's field names
            raise ConfigError(str(exc).replace("cap_s", "max_s")) from None

    @property
    def backoff(self) -> retrying.Backoff:
        return retrying.Backoff(
            attempts=self.attempts, base_s=self.base_s, cap_s=self.max_s, total_s=self.total_s
        )

    @property
    def max_total_s(self) -> float:
        """Upper bound on the seconds slept for one object (every try failing)."""
        return self.backoff.max_total_s

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): jittered, capped."""
        return self.backoff.delay(retry + 1, self.rng.random)

    def call(self, fn: Callable[[], T], *, what: str, retry: bool = True) -> T:
        """``fn()``, retrying transient storage errors; the last error propagates, and a
        credentials error is raised at once as a :class:`CredentialsError`."""
        backoff = self.backoff if retry else dataclasses.replace(self.backoff, attempts=1)
        try:
            return retrying.call(
                fn,
                backoff,
                should_retry,
                what=what,
                kind="storage",
                sleep=self.sleep,
                rng=self.rng.random,
                logger=log,
            )
        except Exception as exc:
            if is_credentials_error(exc):
                raise credentials_error(exc, what) from exc
            raise


NO_RETRY = RetryPolicy(attempts=1)
