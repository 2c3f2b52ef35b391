"""StepOptions: how a Prefect spot step runs (task options), apart from what it runs (StepSpec).

``spot_task``, ``run_spot_step`` and ``SpotTask`` take the same keyword arguments; they are
collected here once, checked at the call (a bad value is a one-line ConfigError naming it), and
every other keyword is a :class:`~spot_workflows.StepSpec` field (``gpus``, ``image``, ``env``,
``checkpoint_uri``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from spot_workflows.errors import ConfigError
from spot_workflows.runner import RunnerEvent


@dataclass(frozen=True)
class StepOptions:
    """The options of a spot step's Prefect task (see :func:`~spot_workflows.prefect.spot_task`).

    :param backend: a backend block (LocalBackendBlock, AwsBatchBackendBlock, ...) or a Backend.
    :param policy: a SpotPolicyBlock or a SpotPolicy (default: ``SpotPolicy()``).
    :param name: the task's name (default: the function's name).
    :param key: the step key (default: derived from the flow run, the name and the call's place).
    :param retries: Prefect retries of the task (crashes, API errors; not the step's own budgets).
    :param retry_delay_seconds: seconds between those retries.
    :param tags: Prefect tags of the task run.
    :param poll_interval: seconds between looks at the live job (> 0).
    :param on_event: called with every runner event (submitted, preempted, escalated, ...).
    :param artifact: publish the attempt ledger as a markdown artifact.
    """

    backend: Any
    policy: Any = None
    name: str | None = None
    key: str | None = None
    retries: int = 0
    retry_delay_seconds: float = 0.0
    tags: Sequence[str] = field(default=())
    poll_interval: float = 1.0
    on_event: Callable[[RunnerEvent], None] | None = None
    artifact: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, got {self.retries!r}")
        for name, low in (("retry_delay_seconds", 0.0), ("poll_interval", None)):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (value > 0 if low is None else value >= low)
            if not ok:
                bound = "> 0" if low is None else ">= 0"
                raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
        if isinstance(self.tags, str):
            raise ConfigError(f"tags must be a list of strings, got the string {self.tags!r}")
        if self.on_event is not None and not callable(self.on_event):
            raise ConfigError(f"on_event must be callable, got {type(self.on_event).__name__}")

    @classmethod
    def split(cls, **kwargs: Any) -> tuple[StepOptions, dict[str, Any]]:
        """Task options from ``kwargs``; what is left are StepSpec fields."""
        names = {f.name for f in fields(cls)}
        options = cls(**{k: v for k, v in kwargs.items() if k in names})
        return options, {k: v for k, v in kwargs.items() if k not in names}

    def task_options(self, default_name: str) -> Mapping[str, Any]:
        """What Prefect's ``Task.with_options`` gets."""
        return {
            "name": self.name or default_name,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "tags": set(self.tags),
        }
