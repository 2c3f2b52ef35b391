"""Pydantic models for what users configure: the step, the spot policy.

Every field is validated; a bad value raises :class:`pydantic.ValidationError` (a ``ValueError``)
whose message names the field and the allowed range.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spot_workflows.core.outcomes import Capacity

_STEP_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
_SCHEMES = ("file://", "s3://", "gs://", "memory://")
_URI_BAD_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def validate_step_key(value: str) -> str:
    """A step key is one path segment: letters, digits, ``._=-``; no ``/``, no ``..``."""
    if not isinstance(value, str) or not _STEP_KEY.fullmatch(value) or ".." in value:
        raise ValueError(
            f"step key {value!r} must be 1-200 characters of letters, digits, '.', '_', '=' or '-', "
            "start with a letter or digit, and contain no '/' or '..'"
        )
    return value


def validate_checkpoint_uri(value: str) -> str:
    """Checkpoint URIs are ``file://``, ``s3://``, ``gs://`` (or ``memory://`` in tests) prefixes."""
    if not isinstance(value, str) or not value.startswith(_SCHEMES):
        raise ValueError(
            f"checkpoint URI {value!r} must start with one of {', '.join(_SCHEMES)} "
            "(e.g. file:///data/ckpt/my-step or s3://bucket/ckpt/my-step)"
        )
    scheme, path = value.split("://", 1)
    if _URI_BAD_CHARS.search(value) or _PERCENT.search(value):
        raise ValueError(
            f"checkpoint URI {value!r} must not contain backslashes, control characters (NUL, "
            "newline) or percent-encoding (%2e, %2f, ...); write the path plainly"
        )
    if any(part in (".", "..") for part in path.split("/")):
        raise ValueError(f"checkpoint URI {value!r} must not contain '.' or '..' segments")
    if scheme == "file" and not path.startswith("/"):
        raise ValueError(
            f"checkpoint URI {value!r} must name an absolute path: file:///abs/path "
            "(three slashes; file://x is resolved against the current directory)"
        )
    if not path.strip("/") or (path.startswith("/") and scheme in ("s3", "gs")):
        raise ValueError(
            f"checkpoint URI {value!r} must name a bucket or directory below the root "
            "(e.g. file:///data/ckpt/my-step or s3://bucket/ckpt/my-step)"
        )
    return value.rstrip("/")


class SpotPolicy(BaseModel):
    """How a step spends spot capacity and when it escalates to on-demand.

    Preemptions are charged to ``preemption_budget``; application errors to ``app_error_retries``;
    they never share one budget (unlike AWS/GCP Batch's own retry settings).
    """

    model_config = ConfigDict(extra="forbid")

    preemption_budget: Annotated[int, Field(ge=0, le=100)] = 3
    """Spot attempts that may end PREEMPTED before the step escalates to on-demand."""
    app_error_retries: Annotated[int, Field(ge=0, le=20)] = 0
    """Times an application error (non-zero exit not caused by a reclaim) is retried."""
    infra_error_retries: Annotated[int, Field(ge=0, le=20)] = 2
    """Retries for infrastructure faults (lost VM, host errors that are not reclaims)."""
    capacity_timeout_s: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 900.0
    """A spot attempt still waiting for capacity after this long is cancelled as NO_CAPACITY."""
    on_demand_capacity_timeout_s: Annotated[float | None, Field(gt=0)] = None
    """Same for on-demand attempts; None waits as long as the backend does."""
    no_capacity_escalates: bool = True
    """NO_CAPACITY on spot escalates to on-demand at once (else it is retried on spot)."""
    max_attempts: Annotated[int, Field(ge=1, le=200)] = 10
    """Absolute cap on attempts of the step, all capacities together."""
    start_on: Capacity = Capacity.SPOT
    """Capacity of the first attempt (ON_DEMAND skips spot entirely)."""
    strategy: str = "auto"
    """Escalation strategy name (see ``spot_workflows.core.escalation``). ``auto`` is
    ``deadline`` when ``deadline_s`` is set and ``attempts`` otherwise."""
    deadline_s: Annotated[float | None, Field(gt=0)] = None
    """Seconds from the step's first submission by which it must finish (deadline-aware strategies)."""
    budget_usd: Annotated[float | None, Field(gt=0)] = None
    """Cap on the step's total spend in US dollars; never exceeded (the planner stops first)."""
    work_s: Annotated[float | None, Field(gt=0)] = None
    """The step's total run time on one machine, in seconds (the user's estimate). With the
    checkpoint manifest's progress it gives the work left; None: estimated from the ledger."""
    restart_overhead_s: Annotated[float | None, Field(ge=0)] = None
    """Seconds a new attempt spends before it makes progress (submit-to-running plus restore).
    None: measured from the ledger, plus ``restore_s``."""
    restore_s: Annotated[float, Field(ge=0)] = 0.0
    """Seconds a resumed attempt needs to restore its checkpoint (added to the measured overhead)."""
    spot_usd_per_hour: Annotated[float, Field(gt=0)] = 0.9731
    """Hourly price of the step's SPOT capacity (budget and cost arithmetic)."""
    on_demand_usd_per_hour: Annotated[float, Field(gt=0)] = 3.06
    """Hourly price of the step's ON_DEMAND capacity."""

    @model_validator(mode="after")
    def _check(self) -> SpotPolicy:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        return self


class StepSpec(BaseModel):
    """One unit of work: a command, its resources and where it checkpoints."""

    model_config = ConfigDict(extra="forbid")

    key: str
    """Stable id of the step; the same key re-attaches to the same ledger and checkpoints."""
    command: list[str] = Field(min_length=1)
    checkpoint_uri: str
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    vcpus: Annotated[float, Field(gt=0)] = 1
    memory_mib: Annotated[int, Field(gt=0)] = 2048
    gpus: Annotated[int, Field(ge=0)] = 0
    instance_types: list[str] = Field(default_factory=list)
    timeout_s: Annotated[float | None, Field(gt=0)] = None
    notice_source: str = "auto"

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return validate_step_key(v)

    @field_validator("checkpoint_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return validate_checkpoint_uri(v)

    @field_validator("notice_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v not in ("aws", "gcp", "local", "auto"):
            raise ValueError("notice_source must be one of aws, gcp, local, auto")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name.startswith("SPOT_"):
                raise ValueError(
                    f"env variable {name!r} is reserved: SPOT_* is set by spot-workflows"
                )
        return v
