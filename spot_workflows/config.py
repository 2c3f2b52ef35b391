"""Pydantic models for what users configure: the step, the spot policy.

Every field is validated when the model is built; a bad value raises :class:`InvalidConfigError`,
a :class:`~spot_workflows.errors.ConfigError` (and a ``ValueError``) that is also pydantic's
``ValidationError``, whose one-line message names the field and the accepted range.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, get_args, get_origin

import annotated_types as at
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from spot_workflows.core.outcomes import Capacity
from spot_workflows.errors import ConfigError, describe_invalid

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


def _problem(message: str) -> PydanticCustomError:
    """A validation problem whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("value_error", "{reason}", {"reason": message})


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise _problem(f"must be a number, not a boolean ({value})")
    return value


NotBool = BeforeValidator(_no_bool)
"""Counts and amounts refuse ``True``/``False`` (pydantic would read them as 1 and 0)."""
FINITE = Field(allow_inf_nan=False)


class InvalidConfigError(ConfigError, ValidationError):
    """A :class:`StepSpec` or :class:`SpotPolicy` field is invalid.

    One line: ``invalid <what>: <field>: <problem> (accepted: <range>) (got <value>)``. It is a
    :class:`~spot_workflows.errors.ConfigError` (so a ``ValueError``) and also pydantic's
    ``ValidationError`` (``errors()`` lists the problems, each ``msg`` with its accepted range).
    """

    _message: str
    _what: str

    @classmethod
    def wrap(cls, exc: ValidationError, model: type[BaseModel], what: str) -> InvalidConfigError:
        problems = []
        for err in exc.errors(include_url=False):
            field = err["loc"][0] if err["loc"] else None
            msg = err["msg"]
            accepted = accepted_range(model, field) if isinstance(field, str) else None
            if accepted and "(accepted: " not in msg:
                msg = f"{msg} (accepted: {accepted})"
            problems.append((err["loc"], msg, err["input"]))
        return cls._build(exc.title, what, problems)

    @classmethod
    def _build(
        cls, title: str, what: str, problems: list[tuple[Any, str, Any]]
    ) -> InvalidConfigError:
        details: list[Any] = [
            {"type": _problem(msg), "loc": loc, "input": value} for loc, msg, value in problems
        ]
        new = cls.from_exception_data(title, details)
        new._what = what
        new._message = f"invalid {what}: {describe_invalid(new, what)}"
        return new

    def __reduce__(self) -> Any:  # pickles (Prefect states, Airflow XCom) as itself, one line
        problems = [(e["loc"], e["msg"], e["input"]) for e in self.errors(include_url=False)]
        return (_rebuild_invalid, (self.title, self._what, problems))

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._message!r})"


def _rebuild_invalid(title: str, what: str, problems: list) -> InvalidConfigError:
    return InvalidConfigError._build(title, what, problems)


def _bounds(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            inner = _bounds(m.metadata)
            parts.extend([inner] if inner else [])
            continue
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(m, getattr(at, attr.capitalize())):
                bound = getattr(m, attr)
                shown = int(bound) if float(bound).is_integer() else bound
                parts.append(f"{sign} {shown}")
    return " and ".join(parts)


_CHOICES: dict[str, str] = {
    "start_on": "SPOT or ON_DEMAND",
    "notice_source": "aws, gcp, local or auto",
    "no_capacity_escalates": "true or false",
    "command": "a non-empty list of strings without NUL characters",
}
_SELF_DESCRIBED = ("strategy", "env", "key", "checkpoint_uri", "notice_source", "instance_types")
"""Fields whose own messages already say what is accepted."""


def accepted_range(model: type[BaseModel], field: str) -> str | None:
    """What ``field`` of ``model`` accepts, in words (None when its own message says it)."""
    if field in _SELF_DESCRIBED:
        return None
    if field in _CHOICES:
        return _CHOICES[field]
    info = model.model_fields.get(field)
    if info is None:
        return None
    args = get_args(info.annotation) if get_origin(info.annotation) is not Annotated else ()
    optional = type(None) in args
    member = next((a for a in args if a is not type(None)), None) if optional else info.annotation
    metadata = list(info.metadata)
    if get_origin(member) is Annotated:
        metadata += list(member.__metadata__)  # type: ignore[union-attr]
        member = get_args(member)[0]
    kind = {int: "an integer", float: "a finite number"}.get(member)  # type: ignore[call-overload]
    if kind is None:
        return None
    bounds = _bounds(metadata)
    text = f"{kind} {bounds}" if bounds else kind
    return f"{text}, or None" if optional else text


class _Checked(BaseModel):
    """Raises :class:`InvalidConfigError` (one line, field and range) instead of pydantic's
    multi-line ``ValidationError``, whichever way the model is built."""

    _what: ClassVar[str] = "value"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except InvalidConfigError:
            raise
        except ValidationError as exc:
            raise InvalidConfigError.wrap(exc, type(self), self._what) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate(obj, **kwargs)
        except InvalidConfigError:
            raise
        except ValidationError as exc:
            raise InvalidConfigError.wrap(exc, cls, cls._what) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any):  # type: ignore[override]
        try:
            return super().model_validate_json(json_data, **kwargs)
        except InvalidConfigError:
            raise
        except ValidationError as exc:
            raise InvalidConfigError.wrap(exc, cls, cls._what) from None


Count = Annotated[int, NotBool]
Amount = Annotated[float, NotBool, FINITE]


class SpotPolicy(_Checked):
    """How a step spends spot capacity and when it escalates to on-demand.

    Preemptions are charged to ``preemption_budget``; application errors to ``app_error_retries``;
    they never share one budget (unlike AWS/GCP Batch's own retry settings). Every number must be
    finite; counts are integers (not booleans); ``strategy`` must be a registered strategy.
    """

    model_config = ConfigDict(extra="forbid")
    _what: ClassVar[str] = "spot policy"

    preemption_budget: Annotated[Count, Field(ge=0, le=100)] = 3
    """Spot attempts that may end PREEMPTED before the step escalates to on-demand."""
    app_error_retries: Annotated[Count, Field(ge=0, le=20)] = 0
    """Times an application error (non-zero exit not caused by a reclaim) is retried."""
    infra_error_retries: Annotated[Count, Field(ge=0, le=20)] = 2
    """Retries for infrastructure faults (lost VM, host errors that are not reclaims)."""
    capacity_timeout_s: Annotated[Amount, Field(gt=0, le=7 * 24 * 3600)] = 900.0
    """A spot attempt still waiting for capacity after this long is cancelled as NO_CAPACITY."""
    on_demand_capacity_timeout_s: Annotated[Amount, Field(gt=0)] | None = None
    """Same for on-demand attempts; None waits as long as the backend does."""
    no_capacity_escalates: bool = True
    """NO_CAPACITY on spot escalates to on-demand at once (else it is retried on spot)."""
    max_attempts: Annotated[Count, Field(ge=1, le=200)] = 10
    """Absolute cap on attempts of the step, all capacities together."""
    start_on: Capacity = Capacity.SPOT
    """Capacity of the first attempt (ON_DEMAND skips spot entirely)."""
    strategy: str = "auto"
    """Escalation strategy name (see ``spot_workflows.core.escalation``). ``auto`` is
    ``deadline`` when ``deadline_s`` is set and ``attempts`` otherwise."""
    deadline_s: Annotated[Amount, Field(gt=0)] | None = None
    """Seconds from the step's first submission by which it must finish (deadline-aware strategies)."""
    budget_usd: Annotated[Amount, Field(gt=0)] | None = None
    """Cap on the step's total spend in US dollars; never exceeded (the planner stops first)."""
    work_s: Annotated[Amount, Field(gt=0)] | None = None
    """The step's total run time on one machine, in seconds (the user's estimate). With the
    checkpoint manifest's progress it gives the work left; None: estimated from the ledger."""
    restart_overhead_s: Annotated[Amount, Field(ge=0)] | None = None
    """Seconds a new attempt spends before it makes progress (submit-to-running plus restore).
    None: measured from the ledger, plus ``restore_s``."""
    restore_s: Annotated[Amount, Field(ge=0)] = 0.0
    """Seconds a resumed attempt needs to restore its checkpoint (added to the measured overhead)."""
    spot_usd_per_hour: Annotated[Amount, Field(gt=0)] = 0.9731
    """Hourly price of the step's SPOT capacity (budget and cost arithmetic)."""
    on_demand_usd_per_hour: Annotated[Amount, Field(gt=0)] = 3.06
    """Hourly price of the step's ON_DEMAND capacity."""

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        from spot_workflows.core.strategies import AUTO, strategy_names

        if v != AUTO and v not in strategy_names():
            raise _problem(
                f"unknown escalation strategy {v!r}; choose one of: "
                + ", ".join([AUTO, *strategy_names()])
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> SpotPolicy:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        return self


class StepSpec(_Checked):
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
            raise _problem(str(exc)) from None

    @field_validator("checkpoint_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        try:
            return validate_checkpoint_uri(v)
        except ValueError as exc:
            raise _problem(str(exc)) from None

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if v and not v[0]:
            raise _problem("command[0] (the program) must not be empty")
        if any("\x00" in arg for arg in v):
            raise _problem("command arguments must not contain NUL characters")
        return v

    @field_validator("instance_types")
    @classmethod
    def _instance_types(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or name != name.strip() or any(c.isspace() or ord(c) < 32 for c in name):
                raise _problem(
                    f"instance type {name!r} must be a non-empty name without spaces or control "
                    "characters (e.g. g5.xlarge, n1-standard-8)"
                )
        return v

    @field_validator("notice_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v not in ("aws", "gcp", "local", "auto"):
            raise _problem(f"notice_source {v!r} must be one of aws, gcp, local, auto")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _ENV_NAME.fullmatch(name):
                raise _problem(f"env variable name {name!r} is not valid: use {_ENV_NAME_RULE}")
            if name.startswith("SPOT_"):
                raise _problem(
                    f"env variable {name!r} is reserved: SPOT_* is set by spot-workflows"
                )
            if "\x00" in value:
                raise _problem(f"env variable {name!r} has a NUL character in its value")
        return v
