"""google-api-core / google-auth errors -> spot-workflows errors, and bounded retries.

Every call the GCP Batch backend makes goes through :func:`call`: transient failures
(``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``, ``ABORTED``) are retried with capped
exponential backoff by the package's one retry helper (:mod:`spot_workflows.retrying`);
missing or rejected credentials are never retried; everything else is translated at once into
an error from :mod:`spot_workflows.errors` whose text says what to fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc

from spot_workflows.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CredentialsError,
    NotFoundError,
    SpotWorkflowsError,
)
from spot_workflows.retrying import Backoff, retrying

T = TypeVar("T")

log = logging.getLogger("spot_workflows.gcp")

TRANSIENT: tuple[type[Exception], ...] = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
)

_LOGIN = (
    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file, or run on a VM / GKE pod with an attached service account"
)
_ROLES = (
    "grant the caller roles/batch.jobsEditor on the project and roles/iam.serviceAccountUser on "
    "the job's service account; if the message says the API is disabled, run `gcloud services "
    "enable batch.googleapis.com compute.googleapis.com logging.googleapis.com`"
)


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return " ".join(str(msg).split())[:500]


def translate(exc: BaseException, *, what: str) -> SpotWorkflowsError:
    """The package error for ``exc``, raised while doing ``what`` (e.g. ``create job x in P``)."""
    msg = _message(exc)
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return CredentialsError(f"no Google Cloud credentials found ({msg}); {_LOGIN}")
    if isinstance(exc, auth_exc.RefreshError | gexc.Unauthenticated):
        return CredentialsError(
            f"Google Cloud rejected the credentials while trying to {what}: {msg}; "
            f"refresh them ({_LOGIN})"
        )
    if isinstance(exc, gexc.PermissionDenied):
        return CredentialsError(f"permission denied while trying to {what}: {msg}; {_ROLES}")
    if isinstance(exc, gexc.NotFound):
        return NotFoundError(
            f"not found while trying to {what}: {msg}; check the project id and the region "
            "(Batch is regional: projects/PROJECT/locations/REGION) and that the job still exists"
        )
    if isinstance(exc, gexc.InvalidArgument | gexc.FailedPrecondition):
        return ConfigError(
            f"GCP Batch rejected the request to {what}: {msg}; check machine_type (e.g. "
            "g2-standard-8), accelerator_type (e.g. nvidia-l4) and zones: the accelerator must "
            "exist in every allowed zone and fit the machine type (`gcloud compute "
            "accelerator-types list --filter=zone:ZONE`)"
        )
    if isinstance(exc, gexc.ResourceExhausted):
        return CapacityError(
            f"quota exhausted while trying to {what}: {msg}; request more quota (CPUS, "
            "GPUS_ALL_REGIONS, NVIDIA_*_GPUS, PREEMPTIBLE_NVIDIA_*_GPUS for spot) under IAM & "
            "Admin > Quotas, or use another region or machine type"
        )
    if isinstance(exc, TRANSIENT):
        return BackendError(
            f"GCP Batch did not answer while trying to {what} ({type(exc).__name__}: {msg}); "
            "it is retried with backoff, so this persisted: check status.cloud.google.com and "
            "your network, then run the step again (it re-attaches)"
        )
    if isinstance(exc, auth_exc.GoogleAuthError):
        return CredentialsError(f"Google authentication failed while trying to {what}: {msg}")
    return BackendError(f"GCP Batch failed while trying to {what}: {type(exc).__name__}: {msg}")


def is_transient(exc: BaseException) -> bool:
    """The GCP retry decision: ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ``INTERNAL``,
    ``ABORTED``; never credentials, permissions or bad requests."""
    return isinstance(exc, TRANSIENT)


def call(
    fn: Callable[[], T],
    *,
    what: str,
    tries: int = 4,
    backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
    passthrough: tuple[type[Exception], ...] = (),
) -> T:
    """Run ``fn``; retry transient errors up to ``tries`` times; translate the rest.

    Waits ``min(max_backoff_s, backoff_s * 2**(n-1))`` before retry ``n`` (no jitter).
    Exceptions in ``passthrough`` (e.g. ``NotFound`` for a lookup, ``AlreadyExists`` for a
    create) are re-raised untouched for the caller to handle.
    """
    backoff = Backoff(
        attempts=max(1, tries),
        base_s=min(backoff_s, max_backoff_s),
        cap_s=max_backoff_s,
        jitter=False,
    )

    def again(exc: BaseException) -> bool:
        return not isinstance(exc, passthrough) and is_transient(exc)

    try:
        return retrying(backoff, again, what=what, kind="GCP", sleep=sleep, logger=log)(fn)
    except passthrough:
        raise
    except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError) as exc:
        raise translate(exc, what=what) from exc
