"""Kept for compatibility: termination watching lives in :mod:`spot_workflows.termination`
(it has no Airflow in it, and Prefect uses it too)."""

from spot_workflows.termination import (
    DEFAULT_KINDS,
    NoticeSource,
    TerminationWatch,
    _payload,
    normalize_kinds,
    payload_notice,
)

__all__ = [
    "DEFAULT_KINDS",
    "NoticeSource",
    "TerminationWatch",
    "_payload",
    "normalize_kinds",
    "payload_notice",
]
