"""AWS Batch backend: job queues per capacity (placements, possibly in several regions), a job
definition per step spec (and region).

- ``submit`` registers (once) a job definition from the StepSpec -- image, command, vCPU/memory,
  GPU ``resourceRequirements``, timeout, an optional Batch-level ``retryStrategy`` that retries
  ``Host EC2*`` reclaims in place -- and submits the attempt to the spot or the on-demand queue
  with the worker environment in ``containerOverrides``. The job name is the ledger's
  (deterministic per attempt), so a lost answer or a crashed runner re-attaches via ``find``.
- ``describe`` calls DescribeJobs in batches of 100 and classifies each job with the core
  classifier; a RUNNABLE job is PENDING, and the planner cancels it past the capacity timeout.
- ``cancel`` is TerminateJob (cancels a job that has not started, stops one that has).
- ``find`` lists each queue with a ``JOB_NAME`` filter (which returns jobs in every status).
- Placements: ``spot_queue``/``on_demand_queue`` are one placement each; ``placements`` lists
  several queues per capacity, each in its own region (default: the backend's). One Batch client
  per region; a job outside the home region is named by its job ARN (see ``aws_placements``).
  ``check_spec`` makes sure, once, that every other region's queues can be reached with these
  credentials, before anything is recorded or submitted.
- Hosts: with ``resolve_hosts``, ``describe`` adds the EC2 instance id, type and zone a job ran on
  (see ``aws_hosts``).

Clients are injectable (``session``, ``endpoint_url``, or ready ``batch_client``/``ecs_client``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from spot_workflows.backends import aws_placements as ap
from spot_workflows.backends.aws_errors import AwsCaller, RetryPolicy, make_client
from spot_workflows.backends.aws_hosts import (  # noqa: F401  (container_hosts: public here)
    JobHosts,
    container_hosts,
)
from spot_workflows.backends.aws_jobs import (
    env_list,
    job_definition,
    job_definition_name,
    observation_from_job,
    resource_requirements,
    retry_strategy,
)
from spot_workflows.backends.aws_signals import live_price_catalog, placement_scores
from spot_workflows.backends.base import attempt_env
from spot_workflows.config import StepSpec
from spot_workflows.core.cost import PriceCatalog
from spot_workflows.core.outcomes import Capacity, Observation
from spot_workflows.core.placements import Placement, of_capacity
from spot_workflows.errors import ConfigError, SpotWorkflowsError

log = logging.getLogger("spot_workflows.aws")

DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 job ids per call
MAX_REASON = 1024
TAG_STEP = "spot-workflows:step"
TAG_ATTEMPT = "spot-workflows:attempt"
TAG_CAPACITY = "spot-workflows:capacity"
TAG_PLACEMENT = "spot-workflows:placement"


class AwsBatchBackend:
    """Backend protocol over AWS Batch (see module docstring)."""

    name = "aws-batch"
    stop_latency_s = 30.0  # TerminateJob: SIGTERM, then SIGKILL after ECS's 30 s stop timeout

    def __init__(
        self,
        *,
        spot_queue: str | None = None,
        on_demand_queue: str | None = None,
        placements: Sequence[Placement | dict] | None = None,
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
        live_spot_prices: bool = False,
        spot_placement_scores: bool = False,
    ) -> None:
        self.live_spot_prices = live_spot_prices
        self.use_placement_scores = spot_placement_scores
        self.placements = ap.placements_of(
            placements=placements, spot_queue=spot_queue, on_demand_queue=on_demand_queue
        )
        retry_strategy(batch_retries)  # raises ConfigError now rather than at the first submit
        self.queues = {c: of_capacity(self.placements, c)[0].queue for c in Capacity}
        self.batch = batch_client or make_client(
            "batch", session=session, region=region, endpoint_url=endpoint_url
        )
        self.region = region or self.batch.meta.region_name
        self._session, self._endpoint_url = session, endpoint_url
        self._retry, self._sleep = retry, sleep
        self._batch: dict[str, Any] = {self.region: self.batch}
        self._job_hosts = JobHosts(
            home=self.region,
            caller=self._caller,
            session=session,
            endpoint_url=endpoint_url,
            ecs_client=ecs_client,
        )
        self.call = AwsCaller(retry=retry, sleep=sleep, region=self.region)
        self._callers: dict[str, AwsCaller] = {self.region: self.call}
        for p in self.placements:  # one client per region, made now: a bad region fails here
            self._client(ap.region_of(p, self.region))
        self._reached = False
        self.definition_prefix = definition_prefix
        self.batch_retries = batch_retries
        self.job_role_arn = job_role_arn
        self.wrap = wrap
        self.resolve_hosts = resolve_hosts
        self.tags = dict(tags or {})
        self._definitions: dict[tuple[str, str], str] = {}  # (region, name) -> ARN, revision
        self._noticed: set[str] = set()  # job ids an interruption warning was seen for

    # -- Backend protocol --------------------------------------------------------------------
    def submit(
        self,
        spec: StepSpec,
        *,
        job_name: str,
        attempt: int,
        capacity: Capacity,
        placement: str | None = None,
    ) -> str:
        chosen = ap.pick(self.placements, capacity, placement)
        queue, region = chosen.queue, ap.region_of(chosen, self.region)
        definition = self.ensure_job_definition(spec, region=region)
        extra = {"SPOT_NOTICE_SOURCE": "aws"} if spec.notice_source == "auto" else None
        env = attempt_env(spec, attempt=attempt, capacity=capacity, extra=extra)
        tags = {
            **self.tags,
            TAG_STEP: spec.key[:256],
            TAG_ATTEMPT: str(attempt),
            TAG_CAPACITY: capacity.value,
            TAG_PLACEMENT: chosen.name,
        }
        resp = self._caller(region)(
            self._client(region),
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
        return ap.job_ref(str(resp["jobId"]), resp.get("jobArn"), region, self.region)

    def describe(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        out: dict[str, Observation] = {}
        for region, wanted in ap.by_region(job_ids, self.region).items():
            ids = list(wanted)
            for start in range(0, len(ids), DESCRIBE_BATCH):
                chunk = ids[start : start + DESCRIBE_BATCH]
                jobs = self._caller(region)(
                    self._client(region), "describe_jobs", what="AWS Batch jobs", jobs=chunk
                )["jobs"]
                for job in jobs:
                    noticed = {job.get("jobId"), job.get("jobArn")} & self._noticed
                    obs = observation_from_job(job, notice_seen=bool(noticed))
                    if self.resolve_hosts:  # the host it ran on: cost, notices' steps
                        obs = self._job_hosts.with_host(obs, job)
                    for given in wanted.get(str(job.get("jobId")), []) or [obs.job_id]:
                        out[given] = obs.model_copy(update={"job_id": given})
                    if region == self.region:
                        out[obs.job_id] = obs
        return out

    def cancel(self, job_id: str, *, reason: str) -> None:
        region, plain = ap.split_job_id(job_id, self.region)
        self._caller(region)(
            self._client(region),
            "terminate_job",
            what=f"AWS Batch job {job_id}",
            jobId=plain,
            reason=(reason or "cancelled by spot-workflows")[:MAX_REASON],
        )

    def find(self, job_name: str) -> str | None:
        """Newest job named ``job_name`` in any placement's queue (JOB_NAME filter: every
        status)."""
        best: tuple[int, str] | None = None
        for region, queues in ap.queues_by_region(self.placements, self.region).items():
            found = self._find_in(region, queues, job_name)
            if found is not None and best is not None and best[0] != found[0]:
                log.warning("more than one AWS Batch job is named %s", job_name)
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        return best[1] if best else None

    def _find_in(self, region: str, queues: Iterable[str], job_name: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for queue in queues:
            token: str | None = None
            while True:
                params: dict[str, Any] = {
                    "jobQueue": queue,
                    "filters": [{"name": "JOB_NAME", "values": [job_name]}],
                }
                if token:
                    params["nextToken"] = token
                page = self._caller(region)(
                    self._client(region),
                    "list_jobs",
                    what=f"AWS Batch job queue {queue!r}",
                    **params,
                )
                for summary in page.get("jobSummaryList", []):
                    if summary.get("jobName") != job_name:
                        continue  # the filter is case-insensitive; names are not
                    created = int(summary.get("createdAt") or 0)
                    if best is not None and best[0] != created:
                        log.warning("more than one AWS Batch job is named %s", job_name)
                    if best is None or created > best[0]:
                        ref = ap.job_ref(
                            str(summary["jobId"]), summary.get("jobArn"), region, self.region
                        )
                        best = (created, ref)
                token = page.get("nextToken")
                if not token:
                    break
        return best

    # -- extras --------------------------------------------------------------------------------
    def record_notice(self, job_id: str) -> None:
        """An interruption warning was seen for ``job_id``'s instance: exit 143 is a reclaim."""
        self._noticed.add(job_id)

    def check_spec(self, spec: StepSpec) -> None:
        """Raise ConfigError for a spec AWS Batch cannot run, or for a placement outside the
        home region whose queue these credentials cannot reach (before anything is recorded)."""
        resource_requirements(spec)
        self.check_placements()

    def check_placements(self) -> None:
        """Once: DescribeJobQueues in each region other than the home one (whose first call
        reports its own errors); a region or queue the credentials cannot reach is a one-line
        ConfigError naming the placement."""
        if self._reached:
            return
        for region, queues in ap.queues_by_region(self.placements, self.region).items():
            if region == self.region:
                continue
            first = next(iter(queues.values()))
            try:
                found = self._caller(region)(
                    self._client(region),
                    "describe_job_queues",
                    what=f"AWS Batch job queues in {region}",
                    jobQueues=list(queues),
                ).get("jobQueues", [])
            except SpotWorkflowsError as exc:
                raise ConfigError(
                    f"placements: placement {first!r} is in region {region}, which these AWS "
                    f"credentials cannot reach ({_one_line(exc)}); enable the region for the "
                    "account, fix the region, or remove the placement"
                ) from None
            missing = ap.missing_queues(queues, found)
            if missing:
                raise ConfigError(
                    f"placements: placement {queues[missing[0]]!r} names job queue "
                    f"{missing[0]!r}, which does not exist in region {region}; fix its queue "
                    "or region (`spot-workflows aws bootstrap --region` creates queues)"
                )
        self._reached = True

    def price_per_hour(
        self, placement: str, *, instance_type: str | None, catalog: PriceCatalog | None = None
    ) -> float | None:
        """USD per hour on ``placement``: its ``usd_per_hour``, else ``catalog``'s price for
        ``instance_type`` in its region on its capacity (None when unknown)."""
        chosen = next((p for p in self.placements if p.name == placement), None)
        if chosen is None:
            raise ConfigError(
                f"placement {placement!r} is not one of {[p.name for p in self.placements]}"
            )
        return ap.price_per_hour(
            chosen, instance_type=instance_type, home=self.region, catalog=catalog
        )

    def price_catalog(self, spec: StepSpec, base: PriceCatalog) -> PriceCatalog:
        """``base``, with the current spot prices of the step's instance types in each spot
        placement's region on top when ``live_spot_prices`` is on."""
        if not (self.live_spot_prices and spec.instance_types):
            return base
        return live_price_catalog(
            base,
            self.placements,
            instance_types=spec.instance_types,
            home=self.region,
            session=self._session,
            endpoint_url=self._endpoint_url,
        )

    def spot_placement_scores(self, spec: StepSpec) -> dict[str, float] | None:
        """EC2 spot placement scores (1-10) per spot placement, when ``spot_placement_scores``
        is on (None: off)."""
        if not self.use_placement_scores:
            return None
        return placement_scores(
            self.placements,
            instance_types=spec.instance_types,
            home=self.region,
            session=self._session,
            endpoint_url=self._endpoint_url,
        )

    def _client(self, region: str) -> Any:
        if region not in self._batch:
            self._batch[region] = make_client(
                "batch", session=self._session, region=region, endpoint_url=self._endpoint_url
            )
        return self._batch[region]

    def _caller(self, region: str) -> AwsCaller:
        if region not in self._callers:
            self._callers[region] = AwsCaller(retry=self._retry, sleep=self._sleep, region=region)
        return self._callers[region]

    def ensure_job_definition(self, spec: StepSpec, *, region: str | None = None) -> str:
        """ARN (with revision) of the ACTIVE job definition for ``spec`` in ``region`` (default:
        the home region); registers it once."""
        region = region or self.region
        client, call = self._client(region), self._caller(region)
        body = job_definition(
            spec, batch_retries=self.batch_retries, job_role_arn=self.job_role_arn, wrap=self.wrap
        )
        name = job_definition_name(self.definition_prefix, spec.key, body)
        if (region, name) in self._definitions:
            return self._definitions[(region, name)]
        what = f"AWS Batch job definition {name!r}"
        found = call(
            client,
            "describe_job_definitions",
            what=what,
            jobDefinitionName=name,
            status="ACTIVE",
        ).get("jobDefinitions", [])
        if found:
            arn = max(found, key=lambda d: int(d.get("revision") or 0))["jobDefinitionArn"]
        else:
            arn = call(
                client,
                "register_job_definition",
                what=what,
                jobDefinitionName=name,
                tags={TAG_STEP: spec.key[:256]},
                **body,
            )["jobDefinitionArn"]
            log.info("registered %s for step %s", arn, spec.key)
        self._definitions[(region, name)] = arn
        return arn


def _one_line(exc: BaseException) -> str:
    """An error's text on one line, cut short (for a message that quotes it)."""
    return " ".join(str(exc).split())[:200]
