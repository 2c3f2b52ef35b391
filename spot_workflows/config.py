"""Pydantic models for what users configure: the step, the spot policy.

Every field is validated when the model is built; a bad value raises :class:`InvalidConfigError`,
a :class:`~spot_workflows.errors.ConfigError` (and a ``ValueError``) that is also pydantic's
``ValidationError``, whose one-line message names the field and the accepted range.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, field_validator

from spot_workflows.core.spot_policy import SpotPolicy
from spot_workflows.validation import (
    Amount,
    Checked,
    Count,
    InvalidConfigError,
    accepted_range,
    problem,
)

__all__ = [
    "MAX_TIMEOUT_S",
    "InvalidConfigError",
    "SpotPolicy",
    "StepSpec",
    "accepted_range",
    "validate_checkpoint_uri",
    "validate_step_key",
]

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


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME_RULE = "letters, digits and '_', not starting with a digit (e.g. WANDB_MODE)"
MAX_TIMEOUT_S = 365 * 24 * 3600
"""Longest ``StepSpec.timeout_s`` (one year): AWS and GCP Batch take the timeout as an integer."""


class StepSpec(Checked):
    """One unit of work: a command, its resources and where it checkpoints.

    Backends add their own limits at submit time (AWS Batch on EC2: ``vcpus >= 1`` and
    ``memory_mib >= 4``), before anything is submitted.
    """

    model_config = ConfigDict(extra="forbid")
    _what: ClassVar[str] = "step"

    key: str
    """Stable id of the step; the same key re-attaches to the same ledger and checkpoints."""
    command: list[str] = Field(min_length=1)
    checkpoint_uri: str
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    vcpus: Annotated[Amount, Field(gt=0)] = 1
    memory_mib: Annotated[Count, Field(gt=0)] = 2048
    gpus: Annotated[Count, Field(ge=0)] = 0
    instance_types: list[str] = Field(default_factory=list)
    timeout_s: Annotated[Amount, Field(gt=0, le=MAX_TIMEOUT_S)] | None = None
    notice_source: str = "auto"

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            return validate_step_key(v)
        except ValueError as exc:
            raise problem(str(exc)) from None

    @field_validator("checkpoint_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        try:
            return validate_checkpoint_uri(v)
        except ValueError as exc:
            raise problem(str(exc)) from None

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if v and not v[0]:
            raise problem("command[0] (the program) must not be empty")
        if any("\x00" in arg for arg in v):
            raise problem("command arguments must not contain NUL characters")
        return v

    @field_validator("instance_types")
    @classmethod
    def _instance_types(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or name != name.strip() or any(c.isspace() or ord(c) < 32 for c in name):
                raise problem(
                    f"instance type {name!r} must be a non-empty name without spaces or control "
                    "characters (e.g. g5.xlarge, n1-standard-8)"
                )
        return v

    @field_validator("notice_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v not in ("aws", "gcp", "local", "auto"):
            raise problem(f"notice_source {v!r} must be one of aws, gcp, local, auto")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.fullmatch(name):
                raise problem(f"env variable name {name!r} is not valid: use {_ENV_NAME_RULE}")
            if name.startswith("SPOT_"):
                raise problem(f"env variable {name!r} is reserved: SPOT_* is set by spot-workflows")
            if "\x00" in value:
                raise problem(f"env variable {name!r} has a NUL character in its value")
        return v
