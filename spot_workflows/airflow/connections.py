"""From an Airflow connection to a backend, a notice source, a checkpoint root and a console URL.

No Airflow import here: a connection arrives as a :class:`ConnectionInfo` (id, type, extras,
credentials), fetched by :mod:`spot_workflows.airflow.hooks` (sync in tasks, async in triggers).

Connection types:

* ``spot_local`` -- the local backend (dev and demo): subprocesses on the machine that runs the
  task and the triggerer. Extras: ``state_dir``, ``checkpoint_root``, ``reclaims`` (seconds after
  start at which the n-th spot attempt is reclaimed), ``unavailable`` (``[[start, end], ...]``
  windows with no spot capacity), ``notice_window_s``, ``grace_s``. Two connections work with no
  setup: ``spot_local_default`` (never reclaims) and ``spot_local_demo`` (reclaims the first two
  spot attempts 3 s after they start).
* ``aws`` -- AWS Batch, with the ``aws_default`` conventions (access key as login/password, or
  boto3's default chain) plus ``spot_queue`` / ``on_demand_queue`` extras;
* ``google_cloud_platform`` -- GCP Batch, with the ``google_cloud_default`` conventions (``project``,
  ``location``, a key file or Application Default Credentials).

The cloud extras are listed in :mod:`spot_workflows.airflow.cloud`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spot_workflows.backends.base import Backend
from spot_workflows.backends.local import LocalBackend, default_state_dir
from spot_workflows.backends.local.events import LocalEventSource
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import validate_checkpoint_uri
from spot_workflows.core.outcomes import TerminationNotice
from spot_workflows.errors import ConfigError

log = logging.getLogger("spot_workflows.airflow")

DEFAULT_CONN_ID = "spot_local_default"
DEMO_CONN_ID = "spot_local_demo"
LOCAL, AWS, GCP = "spot_local", "aws", "google_cloud_platform"
EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True)
class ConnectionInfo:
    """What spot-workflows needs from an Airflow connection (plain values, picklable)."""

    conn_id: str
    conn_type: str
    extra: dict[str, Any] = field(default_factory=dict)
    login: str | None = None
    password: str | None = None
    host: str | None = None

    @property
    def kind(self) -> str:
        kind = {"spot_local": LOCAL, "aws": AWS, "google_cloud_platform": GCP, "gcp": GCP}.get(
            self.conn_type
        )
        if kind is None:
            raise ConfigError(
                f"connection {self.conn_id!r} has type {self.conn_type!r}; spot-workflows runs "
                f"steps through connections of type {LOCAL!r}, {AWS!r} or {GCP!r}"
            )
        return kind


BUILTIN_CONNECTIONS = {
    DEFAULT_CONN_ID: ConnectionInfo(DEFAULT_CONN_ID, LOCAL, {}),
    DEMO_CONN_ID: ConnectionInfo(
        DEMO_CONN_ID,
        LOCAL,
        {
            "reclaims": [2.0, 2.0],
            "reclaim_after_checkpoint": True,
            "notice_window_s": 1.0,
            "grace_s": 5.0,
        },
    ),
}
"""Local connections that exist even when nobody defined them (a defined one wins)."""


def home() -> Path:
    """Where local state goes by default: ``$AIRFLOW_HOME/spot-workflows``."""
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "spot-workflows"


class LocalSettings(BaseModel):
    """Extras of a ``spot_local`` connection."""

    model_config = ConfigDict(extra="forbid")

    state_dir: str | None = None
    checkpoint_root: str | None = None
    reclaims: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    unavailable: list[tuple[float, float]] = Field(default_factory=list)
    notice_window_s: Annotated[float, Field(ge=0)] = 2.0
    grace_s: Annotated[float, Field(ge=0)] = 5.0
    reclaim_after_checkpoint: bool = False


def local_settings(info: ConnectionInfo) -> LocalSettings:
    try:
        return LocalSettings.model_validate(info.extra)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"connection {info.conn_id!r} (spot_local) extra {name!r}: {err['msg']}; allowed "
            f"extras: {', '.join(LocalSettings.model_fields)}"
        ) from None


def local_state_dir(info: ConnectionInfo) -> Path:
    """The connection's ``state_dir`` extra, else ``$SPOT_WORKFLOWS_LOCAL_DIR``, else
    ``~/.spot-workflows/local``: one local spot cloud per state directory."""
    settings = local_settings(info)
    if settings.state_dir:
        return Path(settings.state_dir).expanduser().resolve()
    return default_state_dir()


# -- backends -----------------------------------------------------------------------------------


AirflowLocalBackend = LocalBackend
"""Kept for compatibility: every local backend now runs ``python`` on this interpreter."""

_LOCAL: dict[tuple[Path, str], LocalBackend] = {}
_LOCAL_LOCK = threading.Lock()


def _local_backend(info: ConnectionInfo) -> LocalBackend:
    """A client of the local spot cloud of the connection's state directory (the daemon is
    started on first use and shared by the task, the triggerer and every other process)."""
    settings = local_settings(info)
    state_dir = local_state_dir(info)
    with _LOCAL_LOCK:
        key = (state_dir, settings.model_dump_json())
        backend = _LOCAL.get(key)
        if backend is None:
            backend = LocalBackend(
                state_dir=state_dir,
                market=ScheduledMarket(
                    reclaims=settings.reclaims,
                    unavailable=settings.unavailable,
                    after_checkpoint=settings.reclaim_after_checkpoint,
                ),
                notice_window_s=settings.notice_window_s,
                grace_s=settings.grace_s,
            ).start()
            _LOCAL[key] = backend
        return backend


def close_local_backends() -> None:
    """Forget the cached local clients (the daemons and their jobs go on)."""
    with _LOCAL_LOCK:
        _LOCAL.clear()


def build_backend(info: ConnectionInfo) -> Backend:
    kind = info.kind
    if kind == LOCAL:
        return _local_backend(info)
    if kind == AWS:
        return _aws_backend(info)
    return _gcp_backend(info)


def _aws_backend(info: ConnectionInfo) -> Backend:
    from spot_workflows.airflow.cloud import aws_backend

    return aws_backend(info)


def _gcp_backend(info: ConnectionInfo) -> Backend:
    from spot_workflows.airflow.cloud import gcp_backend

    return gcp_backend(info)


# -- notices, checkpoints, links ----------------------------------------------------------------


class NoticeSource(Protocol):
    """Where termination notices come from. Sources that can only tie notices to steps they were
    told about also have ``track_attempts(step_key, attempts)`` (fed from the step's ledger)."""

    def poll(self) -> list[TerminationNotice]:
        """Notices that arrived since the last poll."""
        ...


def build_notice_source(info: ConnectionInfo, *, since: float | None) -> NoticeSource:
    """Local: the backend's events file. AWS: the bootstrap's SQS queue (EventBridge interruption
    warnings, rebalance recommendations, Batch job changes). GCP: preemption events of the
    watched step's jobs."""
    kind = info.kind
    if kind == LOCAL:
        return LocalEventSource(path=local_state_dir(info) / EVENTS_FILE, since=since)
    from spot_workflows.airflow import cloud

    if kind == AWS:
        return cloud.aws_notice_source(info, since=since)
    return cloud.gcp_notice_source(info, since=since)


def checkpoint_root(info: ConnectionInfo) -> str:
    """Where steps of this connection checkpoint by default (``<root>/<step key>``)."""
    kind = info.kind
    if kind == LOCAL:
        root = local_settings(info).checkpoint_root or f"file://{home() / 'checkpoints'}"
    else:
        root = info.extra.get("checkpoint_root")
        if not root:
            scheme = "s3" if kind == AWS else "gs"
            raise ConfigError(
                f"connection {info.conn_id!r} has no 'checkpoint_root' extra: set it to a "
                f"{scheme}:// prefix (e.g. {scheme}://my-bucket/spot-checkpoints) or pass "
                "checkpoint_uri to the operator"
            )
    return validate_checkpoint_uri(str(root))


_GCP_JOB = re.compile(r"^projects/([^/]+)/locations/([^/]+)/jobs/([^/]+)$")


def console_url(info: ConnectionInfo, job_id: str | None) -> str | None:
    """The cloud console page of a job (None for the local backend)."""
    if not job_id:
        return None
    kind = info.kind
    if kind == AWS:
        region = info.extra.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")
        region = region or "us-east-1"
        return (
            f"https://{region}.console.aws.amazon.com/batch/home?region={region}"
            f"#jobs/detail/{job_id}"
        )
    if kind == GCP:
        m = _GCP_JOB.match(job_id)
        project, location, name = (
            m.groups() if m else (info.extra.get("project"), info.extra.get("location"), job_id)
        )
        if not project or not location:
            return None
        return (
            f"https://console.cloud.google.com/batch/jobsDetail/regions/{location}/jobs/{name}"
            f"/details?project={project}"
        )
    return None
