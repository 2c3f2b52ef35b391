"""Pure AWS Batch shapes: job definitions from a StepSpec, DescribeJobs job -> Observation.

No boto3 here: these functions take and return plain dicts, so the backend, the EventBridge
consumer (a ``Batch Job State Change`` event's ``detail`` is shaped like a DescribeJobs job) and
unit tests share them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from spot_workflows.config import StepSpec
from spot_workflows.core.classify import aws_reclaimed_instance, classify_aws
from spot_workflows.core.outcomes import AttemptState, Observation, Outcome
from spot_workflows.errors import BackendError, ConfigError

RECLAIM_RETRY_GLOB = "Host EC2*"
"""``onStatusReason`` glob of a Batch-level in-place retry of reclaimed jobs (trailing * only)."""
MIN_TIMEOUT_S = 60  # AWS Batch's smallest attemptDurationSeconds
MIN_VCPUS = 1  # EC2 jobs: whole vCPUs, at least one (fractions are Fargate-only)
MIN_MEMORY_MIB = 4  # EC2 jobs: at least 4 MiB
MAX_BATCH_ATTEMPTS = 10
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]+")
_CONTAINER_INSTANCE = re.compile(r"^arn:aws[\w-]*:ecs:[^:]+:\d+:container-instance/([^/]+)/[^/]+$")


def env_list(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def retry_strategy(batch_retries: int) -> dict[str, Any] | None:
    """Batch-level retries of reclaims *in place* (same job id), or None when 0.

    ``evaluateOnExit`` rules are tried in order; when none matches Batch *retries*, so the list
    ends with a catch-all EXIT: only a ``Host EC2 ...`` reason is retried, app errors never are.
    """
    if not 0 <= batch_retries < MAX_BATCH_ATTEMPTS:
        raise ConfigError(
            f"batch_retries must be between 0 and {MAX_BATCH_ATTEMPTS - 1} (AWS Batch allows "
            f"1..{MAX_BATCH_ATTEMPTS} attempts), got {batch_retries}"
        )
    if batch_retries == 0:
        return None
    return {
        "attempts": batch_retries + 1,
        "evaluateOnExit": [
            {"onStatusReason": RECLAIM_RETRY_GLOB, "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ],
    }


def resource_requirements(spec: StepSpec) -> list[dict[str, str]]:
    if spec.vcpus < MIN_VCPUS or spec.memory_mib < MIN_MEMORY_MIB:
        raise ConfigError(
            f"step {spec.key!r}: AWS Batch on EC2 needs vcpus >= {MIN_VCPUS} and memory_mib >= "
            f"{MIN_MEMORY_MIB}, got vcpus={spec.vcpus:g} and memory_mib={spec.memory_mib}; "
            "raise them in the StepSpec"
        )
    vcpus = str(math.ceil(spec.vcpus))
    reqs = [{"type": "VCPU", "value": vcpus}, {"type": "MEMORY", "value": str(spec.memory_mib)}]
    if spec.gpus:
        reqs.append({"type": "GPU", "value": str(spec.gpus)})
    return reqs


def job_definition(
    spec: StepSpec,
    *,
    batch_retries: int = 0,
    job_role_arn: str | None = None,
    wrap: bool = False,
) -> dict[str, Any]:
    """``register_job_definition`` arguments for ``spec`` (all but ``jobDefinitionName``).

    The per-attempt environment is not part of it: it goes into each submission's
    ``containerOverrides`` so one definition serves every attempt of the step.
    """
    if not spec.image:
        raise ConfigError(
            f"step {spec.key!r} has no image: AWS Batch runs containers, set StepSpec.image "
            "(e.g. '123456789012.dkr.ecr.us-east-1.amazonaws.com/train:latest')"
        )
    command = ["spot-run", "--", *spec.command] if wrap else list(spec.command)
    container: dict[str, Any] = {
        "image": spec.image,
        "command": command,
        "resourceRequirements": resource_requirements(spec),
    }
    if job_role_arn:
        container["jobRoleArn"] = job_role_arn
    body: dict[str, Any] = {
        "type": "container",
        "platformCapabilities": ["EC2"],
        "containerProperties": container,
    }
    strategy = retry_strategy(batch_retries)
    if strategy:
        body["retryStrategy"] = strategy
    if spec.timeout_s is not None:
        body["timeout"] = {"attemptDurationSeconds": max(MIN_TIMEOUT_S, math.ceil(spec.timeout_s))}
    return body


def job_definition_name(prefix: str, step_key: str, body: Mapping[str, Any]) -> str:
    """``<prefix>-<step key>-<content hash>``: a changed spec gets a new definition name."""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]
    key = _NAME_OK.sub("-", step_key).strip("-")[:80] or "step"
    return f"{prefix}-{key}-{digest}"[:128]


def _ms(value: Any) -> float | None:
    """Epoch milliseconds -> seconds; None for junk (bools, NaN, <= 0, past year 300000)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1e16
    return value / 1000.0 if ok else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (events are untrusted input)."""
    return value if isinstance(value, Mapping) else {}


def _attempts(job: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = job.get("attempts")
    return [a for a in raw if isinstance(a, Mapping)] if isinstance(raw, list | tuple) else []


def _reason(job: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(reason to classify, container reason): a reclaim reason anywhere wins."""
    container = _map(job.get("container"))
    attempts = _attempts(job)
    last = attempts[-1] if attempts else {}
    candidates = [
        job.get("statusReason"),
        last.get("statusReason"),
        container.get("reason"),
        _map(last.get("container")).get("reason"),
    ]
    texts = [c for c in candidates if isinstance(c, str) and c.strip()]
    for text in texts:
        if aws_reclaimed_instance(text):
            return text, None
    cont = container.get("reason") or _map(last.get("container")).get("reason")
    return (texts[0] if texts else None), cont if isinstance(cont, str) else None


def observation_from_job(job: Mapping[str, Any], *, notice_seen: bool = False) -> Observation:
    """Classify one DescribeJobs job (or a Batch Job State Change ``detail``).

    The reason is the job's ``statusReason`` (or a ``Host EC2 ... terminated.`` reason found in
    the last attempt); a more specific ``container.reason`` (``CannotStartContainerError...``)
    can turn an app error into an infrastructure fault. Raises BackendError for a non-object.
    """
    if not isinstance(job, Mapping):
        raise BackendError(f"a Batch job must be a JSON object, got {type(job).__name__}")
    container = _map(job.get("container"))
    attempts = _attempts(job)
    last = attempts[-1] if attempts else {}
    exit_code = _int(container.get("exitCode"))
    if exit_code is None:
        exit_code = _int(_map(last.get("container")).get("exitCode"))
    reason, container_reason = _reason(job)
    status = str(job.get("status") or "")
    state, outcome = classify_aws(status, reason, exit_code, notice_seen=notice_seen)
    if outcome is Outcome.APP_ERROR and container_reason and container_reason != reason:
        alt = classify_aws(status, container_reason, exit_code, notice_seen=notice_seen)[1]
        if alt is Outcome.INFRA_ERROR:
            outcome, reason = alt, f"{reason} ({container_reason})" if reason else container_reason
    started = ended = None
    if state is not AttemptState.PENDING:  # a queued job's attempts[] are from earlier tries
        started = _ms(job.get("startedAt")) or _ms(last.get("startedAt"))
    if state is AttemptState.DONE:
        ended = _ms(job.get("stoppedAt")) or _ms(last.get("stoppedAt"))
    return Observation(
        job_id=str(job.get("jobId") or ""),
        state=state,
        outcome=outcome,
        reason=reason,
        exit_code=exit_code,
        started_at=started,
        ended_at=ended,
        instance_id=aws_reclaimed_instance(reason),
    )


def container_instance_arn(job: Mapping[str, Any]) -> str | None:
    """The ECS container instance that ran the job's last attempt, when Batch reports one."""
    attempts = _attempts(job)
    arn = _map(attempts[-1].get("container")).get("containerInstanceArn") if attempts else None
    arn = arn or _map(job.get("container")).get("containerInstanceArn")
    return arn if isinstance(arn, str) and cluster_of(arn) else None


def cluster_of(container_instance: str) -> str | None:
    """ECS cluster name in a (long-format) container instance ARN."""
    m = _CONTAINER_INSTANCE.match(container_instance or "")
    return m.group(1) if m else None


def env_of(job: Mapping[str, Any]) -> dict[str, str]:
    """The container environment of a job as a dict."""
    out = {}
    env = _map(job.get("container")).get("environment")
    for item in env if isinstance(env, list | tuple) else []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            out[item["name"]] = str(item.get("value", ""))
    return out
