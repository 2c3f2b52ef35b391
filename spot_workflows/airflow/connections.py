"""From an Airflow connection to a backend, a notice source, a checkpoint root and a console URL.

No Airflow import here: a connection arrives as a :class:`ConnectionInfo` (id, type, extras,
credentials), fetched by :mod:`spot_workflows.airflow.hooks` (sync in tasks, async in triggers).
A connection is a view of the backend's settings model (:mod:`spot_workflows.backends.settings`):
its extras are the model's settings, with the same names as the Prefect blocks' fields.

Connection types:

* ``spot-local`` -- the local backend (dev and demo): subprocesses on the machine that runs the
  task and the triggerer (:class:`~spot_workflows.backends.settings.LocalSettings`). Connections
  of the former type ``spot_local`` still work. Two connections work with no setup:
  ``spot_local_default`` (never reclaims) and ``spot_local_demo`` (reclaims the first two spot
  attempts 2 s after their first checkpoint).
* ``aws`` -- AWS Batch (:class:`~spot_workflows.backends.settings.AwsSettings`), with the
  ``aws_default`` conventions: login/password are an access key pair, else the extras, else
  boto3's default chain.
* ``google_cloud_platform`` -- GCP Batch (:class:`~spot_workflows.backends.settings.GcpSettings`),
  with the ``google_cloud_default`` conventions: the Google provider's ``key_path`` /
  ``keyfile_dict`` extras (plain or ``extra__google_cloud_platform__``-prefixed) are read as
  ``service_account_file`` / ``service_account_info``.

Every kind takes a ``placements`` extra: a JSON list of placements (AWS job queues with their
regions, GCP regions with their zones, local markets), as a list or as JSON text; a connection
without it keeps its one spot and one on-demand placement.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spot_workflows.backends.base import Backend
from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.notice_sources import NoticeSource
from spot_workflows.backends.settings import (
    EVENTS_FILE,
    AwsSettings,
    GcpSettings,
    LocalSettings,
)
from spot_workflows.config import validate_checkpoint_uri
from spot_workflows.errors import ConfigError

log = logging.getLogger("spot_workflows.airflow")

DEFAULT_CONN_ID = "spot_local_default"
DEMO_CONN_ID = "spot_local_demo"
LOCAL, AWS, GCP = "spot-local", "aws", "google_cloud_platform"
LEGACY_LOCAL = "spot_local"
"""The former local connection type, still accepted. Airflow logs "Connection schemes (type:
spot_local) shall not contain '_'" on every fetch of such a connection; ``spot-local`` does not
(Airflow also turns a ``spot-local://`` URI back into ``spot_local``, so both must work)."""

_KINDS = {LOCAL: LOCAL, LEGACY_LOCAL: LOCAL, AWS: AWS, GCP: GCP, "gcp": GCP}
_GOOGLE_PREFIX = "extra__google_cloud_platform__"
_GOOGLE_KEYS = {"key_path": "service_account_file", "keyfile_dict": "service_account_info"}

__all__ = [
    "AWS",
    "BUILTIN_CONNECTIONS",
    "DEFAULT_CONN_ID",
    "DEMO_CONN_ID",
    "EVENTS_FILE",
    "GCP",
    "LOCAL",
    "ConnectionInfo",
    "LocalSettings",
    "NoticeSource",
    "build_backend",
    "build_notice_source",
    "checkpoint_root",
    "close_local_backends",
    "console_url",
    "local_settings",
    "local_state_dir",
    "settings",
]


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
        kind = _KINDS.get(self.conn_type)
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
            "reclaim_after_s": [2.0, 2.0],
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


# -- the settings view --------------------------------------------------------------------------


def _what(info: ConnectionInfo) -> str:
    return f"connection {info.conn_id!r} extras"


def _aws_data(info: ConnectionInfo) -> dict[str, Any]:
    data = dict(info.extra)
    if info.login:  # the aws_default conventions: the key pair is the login and password
        data.setdefault("aws_access_key_id", info.login)
        data.setdefault("aws_secret_access_key", info.password or None)
    return data


def _gcp_data(info: ConnectionInfo) -> dict[str, Any]:
    data = {k.removeprefix(_GOOGLE_PREFIX): v for k, v in info.extra.items()}
    for google, ours in _GOOGLE_KEYS.items():  # the Google provider's own names: no warning
        value = data.pop(google, None)
        if value not in (None, "") and ours not in data:
            data[ours] = value
    return data


def settings(info: ConnectionInfo) -> LocalSettings | AwsSettings | GcpSettings:
    """The connection's backend settings; a bad extra raises a one-line ConfigError naming it."""
    kind = info.kind
    if kind == LOCAL:
        return LocalSettings.load(info.extra, what=_what(info))
    if kind == AWS:
        return AwsSettings.load(_aws_data(info), what=_what(info))
    return GcpSettings.load(_gcp_data(info), what=_what(info))


def local_settings(info: ConnectionInfo) -> LocalSettings:
    """The settings of a local connection."""
    return LocalSettings.load(info.extra, what=_what(info))


def local_state_dir(info: ConnectionInfo) -> Path:
    """The connection's ``state_dir`` extra, else ``$SPOT_WORKFLOWS_LOCAL_DIR``, else
    ``~/.spot-workflows/local``: one local spot cloud per state directory."""
    return local_settings(info).cloud_state_dir()


# -- backends -----------------------------------------------------------------------------------


AirflowLocalBackend = LocalBackend
"""Kept for compatibility: every local backend now runs ``python`` on this interpreter."""

_LOCAL: dict[str, LocalBackend] = {}
_LOCAL_LOCK = threading.Lock()


def _local_backend(local: LocalSettings) -> LocalBackend:
    """A client of the local spot cloud of the settings' state directory (the daemon is started
    on first use and shared by the task, the triggerer and every other process)."""
    key = f"{local.cloud_state_dir()}|{local.model_dump_json()}"
    with _LOCAL_LOCK:
        backend = _LOCAL.get(key)
        if backend is None:
            backend = _LOCAL[key] = local.build_backend().start()
        return backend


def close_local_backends() -> None:
    """Forget the cached local clients (the daemons and their jobs go on)."""
    with _LOCAL_LOCK:
        _LOCAL.clear()


def build_backend(info: ConnectionInfo) -> Backend:
    chosen = settings(info)
    if isinstance(chosen, LocalSettings):
        return _local_backend(chosen)
    return chosen.build_backend()


# -- notices, checkpoints, links ----------------------------------------------------------------


def build_notice_source(info: ConnectionInfo, *, since: float | None) -> NoticeSource:
    """Local: the backend's events file. AWS: the bootstrap's SQS queue (EventBridge interruption
    warnings, rebalance recommendations, Batch job changes). GCP: preemption events of the
    watched step's jobs."""
    chosen = settings(info)
    try:
        return chosen.notice_source(since=since)
    except ConfigError as exc:  # e.g. no events queue: say which connection
        raise ConfigError(f"{_what(info)}: {exc}") from None


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
    """The cloud console page of a job (None for the local backend). Reads the extras as they
    are: a link never fails the task."""
    if not job_id:
        return None
    kind = info.kind
    if kind == AWS:
        region = info.extra.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")
        region = region or "us-east-1"
        if job_id.startswith("arn:") and job_id.count(":") >= 5:  # a job in another region
            region, job_id = job_id.split(":")[3], job_id.rsplit("/", 1)[-1]
        return (
            f"https://{region}.console.aws.amazon.com/batch/home?region={region}"
            f"#jobs/detail/{job_id}"
        )
    if kind == GCP:
        extra = _gcp_data(info)
        m = _GCP_JOB.match(job_id)
        region = extra.get("region") or extra.get("location")
        project, location, name = m.groups() if m else (extra.get("project"), region, job_id)
        if not project or not location:
            return None
        return (
            f"https://console.cloud.google.com/batch/jobsDetail/regions/{location}/jobs/{name}"
            f"/details?project={project}"
        )
    return None
