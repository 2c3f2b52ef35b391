"""AWS Batch backend: one job queue per capacity, a job definition per step spec.

- ``submit`` registers (once) a job definition from the StepSpec -- image, command, vCPU/memory,
  GPU ``resourceRequirements``, timeout, an optional Batch-level ``retryStrategy`` that retries
  ``Host EC2*`` reclaims in place -- and submits the attempt to the spot or the on-demand queue
  with the worker environment in ``containerOverrides``. The job name is the ledger's
  (deterministic per attempt), so a lost answer or a crashed runner re-attaches via ``find``.
- ``describe`` calls DescribeJobs in batches of 100 and classifies each job with the core
  classifier; a RUNNABLE job is PENDING, and the planner cancels it past the capacity timeout.
- ``cancel`` is TerminateJob (cancels a job that has not started, stops one that has).
- ``find`` lists each queue with a ``JOB_NAME`` filter (which returns jobs in every status).

Clients are injectable (``session``, ``endpoint_url``, or ready ``batch_client``/``ecs_client``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spot_workflows.backends.aws_errors import AwsCaller, RetryPolicy, make_client
from spot_workflows.backends.aws_jobs import (
    cluster_of,
    container_instance_arn,
    env_list,
    job_definition,
    job_definition_name,
    observation_from_job,
    resource_requirements,
    retry_strategy,
)
from spot_workflows.backends.base import attempt_env
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity, Observation
from spot_workflows.errors import ConfigError, SpotWorkflowsError

log = logging.getLogger("spot_workflows.aws")

DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 job ids per call
MAX_REASON = 1024
TAG_STEP = "spot-workflows:step"
TAG_ATTEMPT = "spot-workflows:attempt"
TAG_CAPACITY = "spot-workflows:capacity"


class AwsBatchBackend:
    """Backend protocol over AWS Batch (see module docstring)."""

    name = "aws-batch"
    stop_latency_s = 30.0  # TerminateJob: SIGTERM, then SIGKILL after ECS's 30 s stop timeout

    def __init__(
        self,
        *,
        spot_queue: str,
        on_demand_queue: str,
        region: str | None = None,
        session: Any = None,
        endpoint_url: str | None = None,
        batch_client: Any = None,
        ecs_client: Any = None,
        definition_prefix: str = "spot-workflows",
        batch_retries: int = 0,
        job_role_arn: str | None = None,
        wrap: bool = False,
        resolve_hosts: bool = True,
        tags: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not spot_queue or not on_demand_queue:
            raise ConfigError(
                "AwsBatchBackend needs spot_queue and on_demand_queue (names or ARNs)"
            )
        retry_strategy(batch_retries)  # raises ConfigError now rather than at the first submit
        self.queues = {Capacity.SPOT: spot_queue, Capacity.ON_DEMAND: on_demand_queue}
        self.batch = batch_client or make_client(
            "batch", session=session, region=region, endpoint_url=endpoint_url
        )
        self.region = region or self.batch.meta.region_name
        self._ecs = ecs_client
        self._ecs_factory = lambda: make_client(
            "ecs", session=session, region=self.region, endpoint_url=endpoint_url
        )
        self.call = AwsCaller(retry=retry, sleep=sleep, region=self.region)
        self.definition_prefix = definition_prefix
        self.batch_retries = batch_retries
        self.job_role_arn = job_role_arn
        self.wrap = wrap
        self.resolve_hosts = resolve_hosts
        self.tags = dict(tags or {})
        self._definitions: dict[str, str] = {}  # definition name -> ARN with revision
        self._hosts: dict[str, dict[str, str | None]] = {}  # container instance ARN -> host
        self._noticed: set[str] = set()  # job ids an interruption warning was seen for

    # -- Backend protocol --------------------------------------------------------------------
    def submit(self, spec: StepSpec, *, job_name: str, attempt: int, capacity: Capacity) -> str:
        queue = self.queues[capacity]
        definition = self.ensure_job_definition(spec)
        extra = {"SPOT_NOTICE_SOURCE": "aws"} if spec.notice_source == "auto" else None
        env = attempt_env(spec, attempt=attempt, capacity=capacity, extra=extra)
        tags = {
            **self.tags,
            TAG_STEP: spec.key[:256],
            TAG_ATTEMPT: str(attempt),
            TAG_CAPACITY: capacity.value,
        }
        resp = self.call(
            self.batch,
            "submit_job",
            what=f"AWS Batch job queue {queue!r}",
            before_retry=lambda: self.find(job_name),
            jobName=job_name,
            jobQueue=queue,
            jobDefinition=definition,
            containerOverrides={"environment": env_list(env)},
            tags=tags,
        )
        if isinstance(resp, str):  # before_retry found the job AWS had accepted
            log.info("submit of %s was accepted before its answer was lost: %s", job_name, resp)
            return resp
        return str(resp["jobId"])

    def describe(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        out: dict[str, Observation] = {}
        ids = list(dict.fromkeys(j for j in job_ids if j))
        for start in range(0, len(ids), DESCRIBE_BATCH):
            chunk = ids[start : start + DESCRIBE_BATCH]
            jobs = self.call(self.batch, "describe_jobs", what="AWS Batch jobs", jobs=chunk)["jobs"]
            for job in jobs:
                obs = observation_from_job(job, notice_seen=job.get("jobId") in self._noticed)
                obs = self._with_host(obs, job)
                out[obs.job_id] = obs
                arn = job.get("jobArn")
                if arn in chunk:  # the caller asked by ARN
                    out[arn] = obs
        return out

    def cancel(self, job_id: str, *, reason: str) -> None:
        self.call(
            self.batch,
            "terminate_job",
            what=f"AWS Batch job {job_id}",
            jobId=job_id,
            reason=(reason or "cancelled by spot-workflows")[:MAX_REASON],
        )

    def find(self, job_name: str) -> str | None:
        """Newest job named ``job_name`` in either queue (JOB_NAME filter: every status)."""
        best: tuple[int, str] | None = None
        for queue in dict.fromkeys(self.queues.values()):
            token: str | None = None
            while True:
                params: dict[str, Any] = {
                    "jobQueue": queue,
                    "filters": [{"name": "JOB_NAME", "values": [job_name]}],
                }
                if token:
                    params["nextToken"] = token
                page = self.call(
                    self.batch, "list_jobs", what=f"AWS Batch job queue {queue!r}", **params
                )
                for summary in page.get("jobSummaryList", []):
                    if summary.get("jobName") != job_name:
                        continue  # the filter is case-insensitive; names are not
                    created = int(summary.get("createdAt") or 0)
                    if best is not None and best[0] != created:
                        log.warning("more than one AWS Batch job is named %s", job_name)
                    if best is None or created > best[0]:
                        best = (created, str(summary["jobId"]))
                token = page.get("nextToken")
                if not token:
                    break
        return best[1] if best else None

    # -- extras --------------------------------------------------------------------------------
    def record_notice(self, job_id: str) -> None:
        """An interruption warning was seen for ``job_id``'s instance: exit 143 is a reclaim."""
        self._noticed.add(job_id)

    def check_spec(self, spec: StepSpec) -> None:
        """Raise ConfigError for a spec AWS Batch cannot run (before anything is recorded)."""
        resource_requirements(spec)

    def ensure_job_definition(self, spec: StepSpec) -> str:
        """ARN (with revision) of the ACTIVE job definition for ``spec``; registers it once."""
        body = job_definition(
            spec, batch_retries=self.batch_retries, job_role_arn=self.job_role_arn, wrap=self.wrap
        )
        name = job_definition_name(self.definition_prefix, spec.key, body)
        if name in self._definitions:
            return self._definitions[name]
        what = f"AWS Batch job definition {name!r}"
        found = self.call(
            self.batch,
            "describe_job_definitions",
            what=what,
            jobDefinitionName=name,
            status="ACTIVE",
        ).get("jobDefinitions", [])
        if found:
            arn = max(found, key=lambda d: int(d.get("revision") or 0))["jobDefinitionArn"]
        else:
            arn = self.call(
                self.batch,
                "register_job_definition",
                what=what,
                jobDefinitionName=name,
                tags={TAG_STEP: spec.key[:256]},
                **body,
            )["jobDefinitionArn"]
            log.info("registered %s for step %s", arn, spec.key)
        self._definitions[name] = arn
        return arn

    # -- where a job runs (for cost and for tying interruption warnings to steps) ----------------
    def _with_host(self, obs: Observation, job: Mapping[str, Any]) -> Observation:
        if not self.resolve_hosts:
            return obs
        arn = container_instance_arn(job)
        host = self._host(arn) if arn else None
        if not host:
            return obs
        update = {k: v for k, v in host.items() if v and getattr(obs, k) is None}
        return obs.model_copy(update=update) if update else obs

    def _host(self, arn: str) -> dict[str, str | None] | None:
        if arn not in self._hosts:
            try:
                self._hosts.update(container_hosts(self._ecs_client(), [arn], call=self.call))
            except SpotWorkflowsError as exc:  # best effort: never fail a describe over it
                log.debug("could not resolve ECS container instance %s: %s", arn, exc)
                return None
        return self._hosts.get(arn)

    def _ecs_client(self) -> Any:
        if self._ecs is None:
            self._ecs = self._ecs_factory()
        return self._ecs


def container_hosts(
    ecs: Any, arns: Sequence[str], *, call: AwsCaller | None = None
) -> dict[str, dict[str, str | None]]:
    """ECS container instance ARN -> {instance_id, instance_type, zone} (DescribeContainerInstances)."""
    call = call or AwsCaller()
    by_cluster: dict[str, list[str]] = {}
    for arn in arns:
        cluster = cluster_of(arn)
        if cluster:
            by_cluster.setdefault(cluster, []).append(arn)
    out: dict[str, dict[str, str | None]] = {}
    for cluster, members in by_cluster.items():
        for start in range(0, len(members), 100):
            resp = call(
                ecs,
                "describe_container_instances",
                what=f"ECS cluster {cluster!r}",
                cluster=cluster,
                containerInstances=members[start : start + 100],
            )
            for ci in resp.get("containerInstances", []):
                attrs = {a.get("name"): a.get("value") for a in ci.get("attributes") or []}
                out[ci["containerInstanceArn"]] = {
                    "instance_id": ci.get("ec2InstanceId"),
                    "instance_type": attrs.get("ecs.instance-type"),
                    "zone": attrs.get("ecs.availability-zone"),
                }
    return out
