"""What the operator and the sensor share, with no Airflow import: names, parsing, the summary.

* :func:`default_step_key`: the stable step key of a task in a DAG run (same on every Airflow try,
  so a retry opens the same ledger and re-attaches);
* :func:`parse_policy`, :func:`parse_command`, :func:`build_spec`: user input (often rendered from
  Jinja templates, so strings) into validated :class:`SpotPolicy` / :class:`StepSpec`, with errors
  that name the field;
* :func:`step_summary`: the compact XCom summary of a step;
* :func:`watcher_id`, :func:`watch_attempt`, :func:`stop_as_watcher`: which task try waits on
  a step's live attempt, and a stop that only that try may send (see :func:`stop_as_watcher`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Attempt, Decision, Outcome
from spot_workflows.core.planner import describe_history
from spot_workflows.core.summary import StepSummary
from spot_workflows.errors import ConfigError, config_error
from spot_workflows.ledger import Ledger

RESOURCE_FIELDS = ("image", "vcpus", "memory_mib", "gpus", "instance_types", "timeout_s")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9._=-]+")
_TRY = re.compile(r"^(?P<task>.*)#try(?P<try>\d+)$")
STOPPED_REASON = "the Airflow task was stopped (cleared or killed)"


def is_templated(value: Any) -> bool:
    """True if ``value`` (or anything inside it) still holds a Jinja expression."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(is_templated(k) or is_templated(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(is_templated(v) for v in value)
    return False


def default_step_key(*, dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """``<dag_id>.<task_id>.<run_id>[.<map_index>]`` made a valid step key.

    Characters a step key cannot hold (``:``, ``+``, ``/``...) become ``-``; when anything was
    replaced, a short hash of the original keeps two different runs from sharing a key.
    """
    raw = f"{dag_id}.{task_id}.{run_id}" + (
        f".{map_index}" if map_index is not None and map_index >= 0 else ""
    )
    key = re.sub(r"\.{2,}", ".", _BAD_KEY_CHARS.sub("-", raw)).lstrip("._=-").rstrip(".-")
    if key != raw:
        key = f"{key[:180] or 'step'}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return key


def _mapping(value: Any, what: str) -> dict:
    """A dict from a dict, a JSON string or a Python-literal string (how Jinja renders a dict)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(text)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, Mapping):
                return dict(parsed)
        raise ConfigError(f"{what} must be a mapping (dict or JSON object), got {value!r}")
    raise ConfigError(f"{what} must be a mapping (dict or JSON object), got {type(value).__name__}")


def parse_policy(value: SpotPolicy | Mapping | str | None) -> SpotPolicy:
    """A :class:`SpotPolicy` from a policy, a dict or a (rendered) string; errors name the field."""
    if value is None:
        return SpotPolicy()
    if isinstance(value, SpotPolicy):
        return value
    try:
        policy = SpotPolicy.model_validate(_mapping(value, "policy"))
    except ValidationError as exc:
        raise config_error(
            exc,
            "spot policy",
            hint="see SpotPolicy in docs/concepts.md for the fields and their ranges",
        ) from None
    return policy  # (a misspelt strategy is refused by SpotPolicy itself)


def parse_command(value: Sequence[str] | str) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # a list rendered by Jinja
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = shlex.split(text)
        else:
            value = shlex.split(text)
    command = [str(part) for part in value]
    if not command:
        raise ConfigError("command must not be empty: give the program and its arguments")
    return command


def build_spec(
    *,
    key: str,
    command: Sequence[str] | str,
    checkpoint_uri: str,
    env: Mapping[str, Any] | str | None,
    resources: Mapping[str, Any] | str | None,
) -> StepSpec:
    """A validated :class:`StepSpec`; a bad value raises ConfigError naming the field."""
    extra = _mapping(resources, "resources") if resources is not None else {}
    unknown = sorted(set(extra) - set(RESOURCE_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown resources field(s) {unknown}; allowed: {', '.join(RESOURCE_FIELDS)}"
        )
    env_map = _mapping(env, "env") if env is not None else {}
    try:
        return StepSpec(
            key=key,
            command=parse_command(command),
            checkpoint_uri=checkpoint_uri,
            env={str(k): str(v) for k, v in env_map.items()},
            **extra,
        )
    except ValidationError as exc:
        raise config_error(exc, "step") from None


def step_summary(
    *,
    spec: StepSpec,
    attempts: Sequence[Attempt],
    decision: Decision,
    backend: str,
    conn_id: str,
    console_url: str | None,
) -> dict[str, Any]:
    """The compact, JSON-able summary the operator pushes to XCom. Its ``cost`` block is the
    same arithmetic and price catalog as ``spot-workflows report`` and the Prefect artifact."""
    from spot_workflows.core.cost import step_cost
    from spot_workflows.pricing import load_catalog
    from spot_workflows.report import summary

    cost = summary(step_cost(spec.key, attempts, load_catalog(), now=time.time()))
    steps = StepSummary.of(spec.key, attempts)
    return {
        "step_key": spec.key,
        "checkpoint_uri": spec.checkpoint_uri,
        "backend": backend,
        "conn_id": conn_id,
        "succeeded": decision.action.value == "SUCCEED",
        "reason": decision.reason,
        "history": describe_history(attempts),
        "attempts": steps.rows(),
        "capacities": steps.capacities,
        "outcomes": steps.outcomes,
        "preemptions": steps.preemptions,
        "escalated": steps.escalated,
        "final_capacity": steps.capacities[-1] if attempts else None,
        "cost_usd": cost["total_usd"] if not cost["unpriced"] else None,
        "cost": cost,
        "console_url": console_url,
    }


# -- who waits on the live attempt ----------------------------------------------------------------
def watcher_id(
    *, dag_id: str, task_id: str, run_id: str, map_index: int | None, try_number: int
) -> str:
    """``<dag_id>/<task_id>/<run_id>/<map_index>#try<try_number>``: one Airflow try of a task.

    A deferred task resumes under the same try number, so every part of one try (the first
    start, each resume after a trigger) has the same id; a clear or a retry raises the try
    number, so a newer try always has a greater one."""
    index = -1 if map_index is None else map_index
    return f"{dag_id}/{task_id}/{run_id}/{index}#try{try_number}"


def _newer(current: str | None, mine: str) -> bool:
    """Whether ``current`` is a newer try of the same task instance than ``mine``."""
    a, b = _TRY.match(current or ""), _TRY.match(mine)
    if a is None or b is None or a["task"] != b["task"]:
        return False
    return int(a["try"]) > int(b["try"])


def watch_attempt(ledger: Ledger, attempt: Attempt, watcher: str) -> Attempt:
    """Record ``watcher`` as the try now waiting on ``attempt`` (no write when it already is;
    never over a newer try of the same task, which would leave a zombie try in charge)."""

    def fn(current: Attempt) -> Attempt:
        if not current.live or current.watcher == watcher or _newer(current.watcher, watcher):
            return current
        return current.model_copy(update={"watcher": watcher})

    return ledger.change(attempt.number, fn)


def stop_as_watcher(
    ledger: Ledger, job_id: str, watcher: str | None, reason: str = STOPPED_REASON
) -> str | None:
    """Before a stopped Airflow task cancels job ``job_id``: record the job's attempt as being
    stopped on purpose (``stopping=STOPPED``, written ahead, one compare-and-swap), so the next
    try records it as stopped and resumes from its checkpoint instead of failing on a cancel
    "from outside". Returns None when the caller may cancel the job; else why it must leave the
    job alone: the attempt already ended, or another try of the task now waits on it (it
    re-attached after a clear or a retry, and owns the step)."""
    ledger.refresh()
    attempt = next((a for a in ledger.attempts if a.job_id == job_id), None)
    if attempt is None:
        return None  # not recorded here (another step's job?): cancel as asked
    if not attempt.live:
        return f"attempt {attempt.number} already ended ({attempt.outcome})"

    def fn(current: Attempt) -> Attempt:
        if not current.live or current.watcher not in (None, watcher):
            return current
        if current.stopping is not None:
            return current  # already being stopped (e.g. by the planner): keep its outcome
        return current.model_copy(update={"stopping": Outcome.STOPPED, "reason": reason})

    now = ledger.change(attempt.number, fn)
    if not now.live:
        return f"attempt {now.number} already ended ({now.outcome})"
    if now.watcher not in (None, watcher):
        return f"attempt {now.number} is now watched by {now.watcher}, not {watcher}"
    return None
