"""What every backend settings model shares: renamed settings, checkpoint roots, one-line errors."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spot_workflows.config import validate_checkpoint_uri
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement, check_placements, of_capacity
from spot_workflows.errors import ConfigError, config_error
from spot_workflows.validation import problem

log = logging.getLogger("spot_workflows.settings")
_LOGGED: set[tuple[str, str]] = set()


class SettingError(ValueError):
    """A rule across settings that was broken; ``field`` is the setting to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def rename_deprecated(data: Any, renamed: Mapping[str, str], owner: str) -> Any:
    """``data`` with each old setting name of ``renamed`` moved to its new name; each use of an
    old name emits a :class:`DeprecationWarning` naming the new one (and a log line, once)."""
    if not isinstance(data, Mapping) or not any(old in data for old in renamed):
        return data
    out = dict(data)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{old!r} is the deprecated name of {new!r}: set only {new!r}")
        out[new] = out.pop(old)
        message = f"{owner} setting {old!r} is deprecated: rename it {new!r}"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        if (owner, old) not in _LOGGED:  # warnings are hidden by default outside __main__
            _LOGGED.add((owner, old))
            log.warning("%s", message)
    return out


class BackendSettings(BaseModel):
    """Base of the settings models: one name per setting, whichever engine reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KIND: ClassVar[str] = ""
    """The backend in words (for messages)."""
    BACKEND: ClassVar[str] = ""
    """The backend's ``Backend.name`` (for events and links)."""
    RENAMED: ClassVar[dict[str, str]] = {}
    """Deprecated setting name -> its current name (both engines' old names)."""

    checkpoint_root: str | None = Field(
        default=None,
        description=(
            "Prefix under which each step gets its checkpoint directory "
            "(file://, s3:// or gs://); the step key is appended."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_settings(cls, data: Any) -> Any:
        return rename_deprecated(data, cls.RENAMED, cls.__name__)

    @field_validator("placements", mode="before", check_fields=False)
    @classmethod
    def _placements_json(cls, value: Any) -> Any:
        """An Airflow connection's extras may carry the list as JSON text."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise problem(
                    'placements must be a JSON list of placements, e.g. [{"name": "use1", '
                    '"queue": "gpu-spot", "region": "us-east-1"}]'
                ) from None
        return value

    @field_validator("placements", check_fields=False)
    @classmethod
    def _placements(cls, value: list[Placement] | None) -> list[Placement] | None:
        if value is None:
            return None
        try:
            return list(check_placements(value, what="placements"))
        except ConfigError as exc:
            raise problem(str(exc).removeprefix("placements: ")) from None

    @field_validator("checkpoint_root")
    @classmethod
    def _checkpoint_root(cls, value: str | None) -> str | None:
        return None if value is None else validate_checkpoint_uri(value)

    @classmethod
    def load(cls, data: Mapping[str, Any], *, what: str) -> Self:
        """Validated settings from ``data``; a bad value raises a one-line
        :class:`~spot_workflows.errors.ConfigError` that names ``what`` and the setting."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            errors = [_hide_secret(cls, _locate(e)) for e in exc.errors()]
            unknown = any(e["type"] == "extra_forbidden" for e in errors)
            hint = f"the {cls.KIND} settings are {', '.join(cls.model_fields)}" if unknown else ""
            raise config_error(_Errors(errors), what, hint=hint) from None


def need_both_capacities(placements: tuple[Placement, ...], kind: str) -> None:
    """Raise :class:`SettingError` unless ``placements`` hold a SPOT and an ON_DEMAND one."""
    for capacity in Capacity:
        if not of_capacity(placements, capacity):
            raise SettingError(
                "placements",
                f"{kind} needs at least one {capacity.value} placement (capacity "
                f"{capacity.value!r}); add one to placements",
            )


def _locate(error: Any) -> Any:
    """A cross-setting error, attributed to the setting to change."""
    cause = (error.get("ctx") or {}).get("error")
    if not error["loc"] and isinstance(cause, SettingError):
        return {**error, "loc": (cause.field,), "input": "...", "msg": str(cause)}
    return error


def _hide_secret(model: type[BaseModel], error: Any) -> Any:
    """The error without the value it got when that value is a credential."""
    info = model.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    if info is not None and "Secret" in str(info.annotation):
        return {**error, "input": "**********"}
    return error


class _Errors:
    """Validation errors, as :func:`~spot_workflows.errors.config_error` reads them."""

    def __init__(self, errors: list[Any]) -> None:
        self._errors = errors

    def errors(self) -> list[Any]:
        return self._errors
