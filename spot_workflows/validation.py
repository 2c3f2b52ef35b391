"""Model validation that reads as one line: the field, the problem, the accepted range.

:class:`Checked` models raise :class:`InvalidConfigError` instead of pydantic's multi-line
``ValidationError``, whichever way they are built.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from spot_workflows.errors import ConfigError, describe_invalid


def problem(message: str) -> PydanticCustomError:
    """A validation problem whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError("value_error", "{reason}", {"reason": message})


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise problem(f"must be a number, not a boolean ({value})")
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
            {"type": problem(msg), "loc": loc, "input": value} for loc, msg, value in problems
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


class Checked(BaseModel):
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
