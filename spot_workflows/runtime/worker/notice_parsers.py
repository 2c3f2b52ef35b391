"""Pure parsers of metadata answers (AWS IMDSv2, GCE) into termination notices.

No I/O and no clock: each turns one answer into a :class:`TerminationNotice`, ``None`` (no
notice), or :class:`NoticeError`; nothing else escapes them, whatever the input.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.errors import NoticeError

AWS_DEFAULT_ENDPOINT = "http://169.254.169.254"
GCE_DEFAULT_HOST = "metadata.google.internal"
AWS_TOKEN_PATH = "/latest/api/token"
AWS_TOKEN_TTL_S = 21600
AWS_INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
AWS_REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
AWS_INSTANCE_ID = "/latest/meta-data/instance-id"
GCE_PREEMPTED = "/computeMetadata/v1/instance/preempted"
GCE_MAINTENANCE = "/computeMetadata/v1/instance/maintenance-event"
GCE_INSTANCE_ID = "/computeMetadata/v1/instance/id"
GCE_NOTICE_S = 30.0  # spot / preemptible VMs get about 30 s between preempted=TRUE and the stop
MAX_BODY = 64 * 1024
SOURCES = ("aws", "gcp", "local", "auto")
STICKY = (NoticeKind.INTERRUPTION, NoticeKind.MAINTENANCE, NoticeKind.SIGTERM)
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_GCE_MAINTENANCE_VALUES = {"NONE", "MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE"}


# -- pure parsers ------------------------------------------------------------------------------
def _quote(body: Any) -> str:
    text = repr(body[:120]) if isinstance(body, bytes | bytearray | str) else repr(type(body))
    size = len(body) if isinstance(body, bytes | bytearray | str) else 0
    return text + (f" ... ({size} bytes)" if size > 120 else "")


Now = datetime | float  # an aware datetime, or epoch seconds


def _as_datetime(now: Now) -> datetime:
    if isinstance(now, datetime):
        return now if now.tzinfo else now.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(now), tz=UTC)


def _notice(
    kind: NoticeKind, source: str, now: Now, instance_id: str | None, detail: dict, **extra: Any
) -> TerminationNotice:
    return TerminationNotice(
        kind=kind,
        source=source,
        seen_at=_as_datetime(now),
        instance_id=instance_id,
        **extra,
        detail=detail,
    )


def _guard(fn: Callable[..., TerminationNotice | None]) -> Callable[..., TerminationNotice | None]:
    """Whatever goes wrong inside a parser leaves it as a NoticeError, never anything else."""

    def wrapper(status: int, body: bytes, **kw: Any) -> TerminationNotice | None:
        try:
            if isinstance(body, str):
                body = body.encode("utf-8", "replace")
            if not isinstance(body, bytes | bytearray):
                raise NoticeError(f"metadata body must be bytes, got {type(body).__name__}")
            return fn(status, bytes(body), **kw)
        except NoticeError:
            raise
        except Exception as exc:  # RecursionError on nested junk, OverflowError on dates, ...
            raise NoticeError(
                f"{fn.__name__}: unusable answer HTTP {status!r} {_quote(body)}: {exc!r}"
            ) from exc

    return functools.wraps(fn)(wrapper)


def _json_object(status: int, body: bytes, what: str) -> dict:
    if status != 200:
        raise NoticeError(f"{what}: expected HTTP 200 or 404, got HTTP {status!r}: {_quote(body)}")
    if len(body) > MAX_BODY:
        raise NoticeError(f"{what}: body too large ({len(body)} bytes): {_quote(body)}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise NoticeError(f"{what}: body is not JSON: {_quote(body)}") from None
    if not isinstance(doc, dict):
        raise NoticeError(f"{what}: expected a JSON object, got {_quote(body)}")
    return doc


def _aws_time(value: Any, what: str, body: bytes) -> datetime:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise NoticeError(f"{what}: time must be an ISO 8601 string, got {_quote(body)}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise NoticeError(
            f"{what}: time {value!r} is not ISO 8601 (2026-01-01T08:22:00Z)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)


@_guard
def parse_aws_instance_action(
    status: int, body: bytes, *, now: Now, source: str = "aws", instance_id: str | None = None
) -> TerminationNotice | None:
    """``spot/instance-action``: 404 = no notice; 200 ``{"action", "time"}`` = interruption."""
    if status == 404:
        return None
    doc = _json_object(status, body, "spot/instance-action")
    action = doc.get("action")
    if not isinstance(action, str) or not 0 < len(action) <= 32:
        raise NoticeError(f"spot/instance-action: no usable 'action' in {_quote(body)}")
    deadline = _aws_time(doc.get("time"), "spot/instance-action", body)
    detail = {"protocol": "aws-imdsv2", "time": doc["time"]}
    return _notice(
        NoticeKind.INTERRUPTION, source, now, instance_id, detail, deadline=deadline, action=action
    )


@_guard
def parse_aws_rebalance(
    status: int, body: bytes, *, now: Now, source: str = "aws", instance_id: str | None = None
) -> TerminationNotice | None:
    """``events/recommendations/rebalance``: 404 = none; ``{"noticeTime"}`` = advisory notice."""
    if status == 404:
        return None
    doc = _json_object(status, body, "events/recommendations/rebalance")
    when = _aws_time(doc.get("noticeTime"), "events/recommendations/rebalance", body)
    detail = {"protocol": "aws-imdsv2", "noticeTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    return _notice(NoticeKind.REBALANCE, source, now, instance_id, detail)


def _gce_value(status: int, body: bytes, what: str) -> str:
    if status != 200:
        raise NoticeError(f"{what}: expected HTTP 200, got HTTP {status!r}: {_quote(body)}")
    if len(body) > 256:
        raise NoticeError(f"{what}: body too large ({len(body)} bytes): {_quote(body)}")
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise NoticeError(f"{what}: body is not ASCII: {_quote(body)}") from None


@_guard
def parse_gce_preempted(
    status: int, body: bytes, *, now: Now, source: str = "gcp", instance_id: str | None = None
) -> TerminationNotice | None:
    """``instance/preempted``: ``TRUE`` = interruption (deadline now + 30 s), ``FALSE`` = none."""
    value = _gce_value(status, body, "instance/preempted")
    if value == "FALSE":
        return None
    if value != "TRUE":
        raise NoticeError(f"instance/preempted: expected TRUE or FALSE, got {_quote(body)}")
    deadline = _as_datetime(now) + timedelta(seconds=GCE_NOTICE_S)
    detail = {"protocol": "gce", "preempted": "TRUE"}
    return _notice(NoticeKind.INTERRUPTION, source, now, instance_id, detail, deadline=deadline)


@_guard
def parse_gce_maintenance(
    status: int, body: bytes, *, now: Now, source: str = "gcp", instance_id: str | None = None
) -> TerminationNotice | None:
    """``instance/maintenance-event``: only ``TERMINATE_ON_HOST_MAINTENANCE`` is a notice."""
    value = _gce_value(status, body, "instance/maintenance-event")
    if value not in _GCE_MAINTENANCE_VALUES:
        raise NoticeError(f"instance/maintenance-event: unknown value {_quote(body)}")
    if value != "TERMINATE_ON_HOST_MAINTENANCE":
        return None  # NONE, or a live migration: harmless to the worker
    detail = {"protocol": "gce", "maintenance-event": value}
    return _notice(NoticeKind.MAINTENANCE, source, now, instance_id, detail)
