"""The boto3 boundary: client construction, bounded retries, and error translation.

Every AWS call the package makes goes through :class:`AwsCaller`, which

- retries throttling, 5xx answers and dropped connections with capped exponential backoff and
  full jitter, at most ``RetryPolicy.max_attempts`` tries (never unbounded), through the
  package's one retry helper (:mod:`spot_workflows.retrying`); missing or rejected credentials
  are never retried;
- translates botocore exceptions into :mod:`spot_workflows.errors` with text that says what to fix
 . Credentials are never logged or put into messages.

botocore's own retries are switched off on the clients made here (``total_max_attempts=1``) so
that the two loops never multiply; a client you inject keeps its own configuration.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from spot_workflows.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CredentialsError,
    NotFoundError,
    SpotWorkflowsError,
)
from spot_workflows.retrying import Backoff, retrying

log = logging.getLogger("spot_workflows.aws")

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ProvisionedThroughputExceededException",
    }
)
SERVER_CODES = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServerException",
    }
)
AUTH_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "AuthFailure",
    }
)
DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}
)
NOT_FOUND_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "NotFoundException",
        "NoSuchBucket",
        "NoSuchEntity",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
    }
)
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
    }
)
INVALID_CODES = frozenset(
    {
        "ValidationException",
        "ValidationError",
        "InvalidParameterValue",
        "InvalidParameterException",
        "InvalidParameterCombination",
        "InvalidInstanceType",
    }
)
_RETRYABLE_EXCEPTIONS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
_NOT_FOUND_TEXT = re.compile(r"does not exist|not found|no such", re.IGNORECASE)
_KNOWN_CODE_IN_TEXT = re.compile(r"<Code>([A-Za-z.]+)</Code>")
_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.DOTALL)

CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
    "credentials) or AWS_PROFILE, or run with an instance/task role; "
    "`aws sts get-caller-identity` must work before spot-workflows can"
)
POLICY_HELP = "attach the policy printed by `spot-workflows aws bootstrap --print-iam-policy`"


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Bounded retry of throttling / 5xx / connection errors: capped exponential full jitter
    (a :class:`~spot_workflows.retrying.Backoff` with ``attempts=max_attempts``)."""

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 20.0
    total_s: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= 20:
            raise ConfigError(f"max_attempts must be between 1 and 20, got {self.max_attempts}")
        _ = self.backoff  # validates base_s, cap_s and total_s

    @property
    def backoff(self) -> Backoff:
        return Backoff(
            attempts=self.max_attempts, base_s=self.base_s, cap_s=self.cap_s, total_s=self.total_s
        )

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return self.backoff.delay(retry, rng)


def error_code(exc: ClientError) -> str:
    """The AWS error code; recovers it from an XML body some endpoints send to JSON clients."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or "")
    if code and not code.isdigit():
        return code
    m = _KNOWN_CODE_IN_TEXT.search(str(err.get("Message") or ""))
    return m.group(1) if m else code


def error_message(exc: ClientError) -> str:
    text = str(exc.response.get("Error", {}).get("Message") or "")
    m = _XML_MESSAGE.search(text)
    return (m.group(1) if m else text).strip()[:500]


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_retryable(exc: BaseException) -> bool:
    """Throttling, server-side faults and dropped connections; never client mistakes."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        return code in THROTTLING_CODES or code in SERVER_CODES or http_status(exc) >= 500
    return isinstance(exc, _RETRYABLE_EXCEPTIONS)


def translate(
    exc: BaseException, *, action: str, what: str | None = None, region: str | None = None
) -> SpotWorkflowsError:
    """A package error for a botocore exception. ``action`` is e.g. ``batch:SubmitJob``;
    ``what`` names the resource in words (``AWS Batch job queue 'gpu-spot'``)."""
    where = f" in region {region}" if region else ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return CredentialsError(f"no usable AWS credentials for {action}: {CREDENTIALS_HELP}")
    if isinstance(exc, NoRegionError):
        return ConfigError(
            f"no AWS region for {action}: pass region=... (CLI: --region) or set AWS_DEFAULT_REGION"
        )
    if isinstance(exc, _RETRYABLE_EXCEPTIONS):
        return BackendError(
            f"cannot reach AWS for {action}{where}: {exc}; check network access, proxies "
            "and the region/endpoint"
        )
    if not isinstance(exc, ClientError):
        if isinstance(exc, BotoCoreError):
            return BackendError(f"AWS call {action} failed: {exc}")
        return BackendError(f"AWS call {action} failed: {exc.__class__.__name__}: {exc}")
    code, msg = error_code(exc), error_message(exc)
    subject = what or action
    if code in AUTH_CODES:
        return CredentialsError(
            f"AWS rejected the credentials for {action} ({code}: {msg}); {CREDENTIALS_HELP}"
        )
    if code in DENIED_CODES:
        return CredentialsError(
            f"the AWS identity is not allowed to call {action} on {subject} ({code}: {msg}); "
            f"{POLICY_HELP}"
        )
    if (
        code in NOT_FOUND_CODES
        or code.endswith(".NotFound")  # EC2: InvalidSubnetID.NotFound, InvalidGroup.NotFound
        or (code == "ClientException" and _NOT_FOUND_TEXT.search(msg))
    ):
        return NotFoundError(
            f"{subject} does not exist{where} ({msg}); create it with `spot-workflows aws "
            "bootstrap` or fix the name/region"
        )
    if code in CAPACITY_CODES:
        return CapacityError(
            f"AWS cannot provide the capacity for {subject} ({code}: {msg}); add instance types "
            "or zones, or request a quota increase"
        )
    if code == "InvalidInstanceType" or (
        code in INVALID_CODES | {"ClientException"} and "instance type" in msg.lower()
    ):
        return ConfigError(
            f"instance type not available{where} for {subject} ({msg}); pick types listed by "
            "`aws ec2 describe-instance-types` for this region (e.g. g5.xlarge, g6.xlarge)"
        )
    if code in INVALID_CODES:
        return ConfigError(f"AWS refused {action} for {subject}: {code}: {msg}")
    if is_retryable(exc):
        return BackendError(
            f"AWS kept failing {action} with {code or http_status(exc)} after retries ({msg}); "
            "AWS is throttling or unavailable: poll less often or try again later"
        )
    return BackendError(f"AWS refused {action} for {subject}: {code}: {msg}")


_loader: Any = None


def new_session() -> Any:
    """A fresh boto3 session (credentials resolved anew) sharing one service-model loader, so
    building a client does not re-read botocore's JSON models every time."""
    global _loader
    core = botocore.session.get_session()
    if _loader is None:
        _loader = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core)


def make_client(
    service: str,
    *,
    session: Any = None,
    region: str | None = None,
    endpoint_url: str | None = None,
) -> Any:
    """A boto3 client with botocore retries off (``AwsCaller`` retries) and sane timeouts."""
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        user_agent_extra="spot-workflows",
    )
    try:
        session = session or new_session()
        return session.client(
            service, region_name=region or None, endpoint_url=endpoint_url, config=config
        )
    except BotoCoreError as exc:
        raise translate(exc, action=f"{service} client") from None


class AwsCaller:
    """Calls ``client.<operation>(**params)`` with bounded retries and translated errors."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        region: str | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.rng = rng
        self.region = region
        self.retries = 0  # retries made so far (for tests and reports)

    @staticmethod
    def action(client: Any, operation: str) -> str:
        meta = client.meta
        api = meta.method_to_api_mapping.get(operation, operation)
        return f"{meta.service_model.signing_name}:{api}"

    def __call__(
        self,
        client: Any,
        operation: str,
        /,
        *,
        what: str | None = None,
        before_retry: Callable[[], Any] | None = None,
        **params: Any,
    ) -> Any:
        """``before_retry`` runs before each retry; a non-None result is returned instead of
        retrying (submit uses it to find a job that AWS accepted before the answer was lost)."""
        action = self.action(client, operation)

        def count(_: object) -> None:
            self.retries += 1

        loop = retrying(
            self.retry.backoff,
            is_retryable,
            what=action,
            kind="AWS",
            sleep=self.sleep,
            logger=log,
            rng=self.rng,
            on_retry=count,
        )
        try:
            for attempt in loop:
                with attempt:
                    again = attempt.retry_state.attempt_number > 1
                    if again and before_retry is not None and (found := before_retry()) is not None:
                        return found
                    return getattr(client, operation)(**params)
        except (BotoCoreError, ClientError, ResponseParserError) as exc:
            raise translate(exc, action=action, what=what, region=self.region) from exc
        raise AssertionError("unreachable")  # pragma: no cover
