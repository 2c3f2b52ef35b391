"""Idempotent AWS setup: compute environments, job queues, EventBridge rules -> SQS.

:meth:`Bootstrap.plan` only reads (Describe/Get/List calls) and says, per resource, ``create``,
``update`` or ``exists``; :meth:`Bootstrap.apply` carries out the creates and updates of a fresh
plan, so a second run is all ``exists``. IAM roles are not created here: pass an existing
instance profile (``instance_role``) and, optionally, a Batch service role (without one AWS uses
the ``AWSServiceRoleForBatch`` service-linked role). :func:`iam_policy` is the least-privilege
policy the package needs at run time (and, with ``bootstrap=True``, to run this setup).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spot_workflows.backends.aws_errors import AwsCaller, RetryPolicy, make_client
from spot_workflows.backends.aws_events import INTERRUPTION, JOB_STATE, REBALANCE
from spot_workflows.errors import BackendError, ConfigError, NotFoundError

DEFAULT_GPU_TYPES = (
    "g6.xlarge",
    "g6.2xlarge",
    "g5.xlarge",
    "g5.2xlarge",
    "g6e.xlarge",
    "g4dn.xlarge",
    "g4dn.2xlarge",
)
"""Diversified single-GPU families: more spot pools -> fewer reclaims and less waiting."""


class BootstrapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str
    subnets: list[str] = Field(default_factory=list)
    security_groups: list[str] = Field(default_factory=list)
    instance_types: list[str] = Field(default_factory=lambda: list(DEFAULT_GPU_TYPES))
    name_prefix: str = Field(default="spot-workflows", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
    instance_role: str = "ecsInstanceRole"
    service_role: str | None = None
    max_vcpus: int = Field(default=256, ge=1)
    spot_allocation: Literal["SPOT_PRICE_CAPACITY_OPTIMIZED", "SPOT_CAPACITY_OPTIMIZED"] = (
        "SPOT_PRICE_CAPACITY_OPTIMIZED"
    )


@dataclass(frozen=True)
class Names:
    spot_ce: str
    on_demand_ce: str
    spot_queue: str
    on_demand_queue: str
    events_queue: str
    rules: dict[str, str]  # rule name -> EventBridge detail-type

    @classmethod
    def for_prefix(cls, prefix: str) -> Names:
        return cls(
            spot_ce=f"{prefix}-spot",
            on_demand_ce=f"{prefix}-on-demand",
            spot_queue=f"{prefix}-spot",
            on_demand_queue=f"{prefix}-on-demand",
            events_queue=f"{prefix}-events",
            rules={
                f"{prefix}-spot-interruption": INTERRUPTION,
                f"{prefix}-rebalance": REBALANCE,
                f"{prefix}-batch-jobs": JOB_STATE,
            },
        )


@dataclass(frozen=True)
class PlannedAction:
    action: Literal["create", "update", "exists"]
    kind: str  # compute-environment | job-queue | sqs-queue | sqs-queue-policy | rule | rule-target
    name: str
    detail: str = ""


TARGET_ID = "spot-workflows-sqs"


class Bootstrap:
    def __init__(
        self,
        *,
        config: BootstrapConfig,
        session: Any = None,
        endpoint_url: str | None = None,
        clients: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wait_timeout_s: float = 900.0,
    ) -> None:
        self.config = config
        self.names = Names.for_prefix(config.name_prefix)
        self._clients = dict(clients or {})
        self._session, self._endpoint = session, endpoint_url
        self.call = AwsCaller(retry=retry, sleep=sleep, region=config.region)
        self.sleep = sleep
        self.wait_timeout_s = wait_timeout_s
        self._ident: tuple[str, str] | None = None
        self._zones = 0

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = make_client(
                service,
                session=self._session,
                region=self.config.region,
                endpoint_url=self._endpoint,
            )
        return self._clients[service]

    # -- ARNs ----------------------------------------------------------------------------------
    def _identity(self) -> tuple[str, str]:
        """(partition, account) of the caller."""
        if self._ident is None:
            arn = self.call(self.client("sts"), "get_caller_identity")["Arn"]
            parts = arn.split(":")
            self._ident = (parts[1], parts[4])
        return self._ident

    def arn(self, service: str, resource: str) -> str:
        partition, account = self._identity()
        return f"arn:{partition}:{service}:{self.config.region}:{account}:{resource}"

    def outputs(self) -> dict[str, str]:
        """What to give AwsBatchBackend / EventConsumer."""
        return {
            "region": self.config.region,
            "spot_queue": self.names.spot_queue,
            "on_demand_queue": self.names.on_demand_queue,
            "events_queue_url": self._queue_url() or "",
        }

    # -- reading -------------------------------------------------------------------------------
    def _ce(self, name: str) -> dict | None:
        envs = self.call(
            self.client("batch"), "describe_compute_environments", computeEnvironments=[name]
        )["computeEnvironments"]
        return envs[0] if envs else None

    def _job_queue(self, name: str) -> dict | None:
        queues = self.call(self.client("batch"), "describe_job_queues", jobQueues=[name])[
            "jobQueues"
        ]
        return queues[0] if queues else None

    def _queue_url(self) -> str | None:
        try:
            return self.call(
                self.client("sqs"), "get_queue_url", QueueName=self.names.events_queue
            )["QueueUrl"]
        except NotFoundError:
            return None

    def _rule(self, name: str) -> dict | None:
        try:
            return self.call(self.client("events"), "describe_rule", Name=name)
        except NotFoundError:
            return None

    def _patterns(self) -> dict[str, dict]:
        queues = [
            self.arn("batch", f"job-queue/{self.names.spot_queue}"),
            self.arn("batch", f"job-queue/{self.names.on_demand_queue}"),
        ]
        out = {}
        for rule, detail_type in self.names.rules.items():
            source = "aws.batch" if detail_type == JOB_STATE else "aws.ec2"
            pattern: dict[str, Any] = {"source": [source], "detail-type": [detail_type]}
            if detail_type == JOB_STATE:
                pattern["detail"] = {"jobQueue": queues}
            out[rule] = pattern
        return out

    def queue_policy(self) -> dict:
        queue_arn = self.arn("sqs", self.names.events_queue)
        rules = [self.arn("events", f"rule/{r}") for r in self.names.rules]
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AllowSpotWorkflowsRules",
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": rules}},
                }
            ],
        }

    def validate(self) -> None:
        """Instance types and subnets exist in the region (read-only; raises ConfigError,
        NotFoundError); records how many zones the subnets span."""
        c = self.config
        if not c.instance_types:
            raise ConfigError("instance_types must name at least one EC2 instance type")
        ec2 = self.client("ec2")
        what = f"instance types {', '.join(c.instance_types)}"
        self.call(ec2, "describe_instance_types", what=what, InstanceTypes=list(c.instance_types))
        if c.subnets:
            subnets = self.call(
                ec2,
                "describe_subnets",
                what=f"subnets {', '.join(c.subnets)}",
                SubnetIds=list(c.subnets),
            )["Subnets"]
            self._zones = len({s["AvailabilityZone"] for s in subnets})

    def plan(self) -> list[PlannedAction]:
        """What :meth:`apply` would do; changes nothing."""
        n, acts, checked = self.names, [], False
        for ce, kind in ((n.spot_ce, "SPOT"), (n.on_demand_ce, "EC2")):
            found = self._ce(ce)
            if found is None and not checked:
                self.validate()
                checked = True
            acts.append(
                PlannedAction(
                    "exists" if found else "create",
                    "compute-environment",
                    ce,
                    found.get("status", "") if found else f"{kind}, {self._ce_summary()}",
                )
            )
        for queue, ce in ((n.spot_queue, n.spot_ce), (n.on_demand_queue, n.on_demand_ce)):
            found = self._job_queue(queue)
            acts.append(PlannedAction("exists" if found else "create", "job-queue", queue, ce))
        url = self._queue_url()
        acts.append(PlannedAction("exists" if url else "create", "sqs-queue", n.events_queue))
        policy = self.queue_policy()
        current = None
        if url:
            attrs = self.call(
                self.client("sqs"), "get_queue_attributes", QueueUrl=url, AttributeNames=["Policy"]
            ).get("Attributes", {})
            current = json.loads(attrs["Policy"]) if attrs.get("Policy") else None
        acts.append(
            PlannedAction(
                "exists" if current == policy else ("update" if url else "create"),
                "sqs-queue-policy",
                n.events_queue,
                "allow events.amazonaws.com from the rules below",
            )
        )
        queue_arn = self.arn("sqs", n.events_queue)
        for rule, pattern in self._patterns().items():
            found = self._rule(rule)
            same = found is not None and json.loads(found.get("EventPattern") or "{}") == pattern
            state_ok = found is not None and found.get("State") == "ENABLED"
            action = "exists" if same and state_ok else ("update" if found else "create")
            acts.append(PlannedAction(action, "rule", rule, n.rules[rule]))
            targets = []
            if found:
                targets = self.call(self.client("events"), "list_targets_by_rule", Rule=rule)[
                    "Targets"
                ]
            has = any(t.get("Arn") == queue_arn for t in targets)
            acts.append(
                PlannedAction("exists" if has else "create", "rule-target", rule, queue_arn)
            )
        return acts

    def _ce_summary(self) -> str:
        c = self.config
        if not c.subnets or not c.security_groups:
            return "needs --subnets and --security-groups"
        zones = f" in {self._zones} zones" if self._zones else ""
        return f"{len(c.instance_types)} instance types, {len(c.subnets)} subnets{zones}"

    # -- writing -------------------------------------------------------------------------------
    def apply(self) -> list[PlannedAction]:
        """Create or update what the plan says; return the plan that was carried out."""
        acts = self.plan()
        todo = {(a.kind, a.name) for a in acts if a.action != "exists"}
        n = self.names
        for ce, kind in ((n.spot_ce, "SPOT"), (n.on_demand_ce, "EC2")):
            if ("compute-environment", ce) in todo:
                self._create_ce(ce, kind)
        for ce in (n.spot_ce, n.on_demand_ce):
            self._wait_valid(ce)
        for queue, ce in ((n.spot_queue, n.spot_ce), (n.on_demand_queue, n.on_demand_ce)):
            if ("job-queue", queue) in todo:
                self.call(
                    self.client("batch"),
                    "create_job_queue",
                    jobQueueName=queue,
                    state="ENABLED",
                    priority=1,
                    computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
                    tags={"spot-workflows": self.config.name_prefix},
                )
        sqs = self.client("sqs")
        if ("sqs-queue", n.events_queue) in todo:
            self.call(
                sqs,
                "create_queue",
                QueueName=n.events_queue,
                Attributes={"MessageRetentionPeriod": "86400", "SqsManagedSseEnabled": "true"},
            )
        url = self._queue_url()
        if ("sqs-queue-policy", n.events_queue) in todo:
            self.call(
                sqs,
                "set_queue_attributes",
                QueueUrl=url,
                Attributes={"Policy": json.dumps(self.queue_policy())},
            )
        queue_arn = self.arn("sqs", n.events_queue)
        for rule, pattern in self._patterns().items():
            if ("rule", rule) in todo:
                self.call(
                    self.client("events"),
                    "put_rule",
                    Name=rule,
                    EventPattern=json.dumps(pattern),
                    State="ENABLED",
                    Description=f"spot-workflows: {n.rules[rule]} -> SQS {n.events_queue}",
                )
            if ("rule-target", rule) in todo:
                self.call(
                    self.client("events"),
                    "put_targets",
                    Rule=rule,
                    Targets=[{"Id": TARGET_ID, "Arn": queue_arn}],
                )
        return acts

    def _create_ce(self, name: str, kind: str) -> None:
        c = self.config
        if not c.subnets or not c.security_groups:
            raise ConfigError(
                f"creating compute environment {name!r} needs --subnets and --security-groups "
                "(use subnets in several availability zones for more spot capacity)"
            )
        resources: dict[str, Any] = {
            "type": kind,
            "allocationStrategy": c.spot_allocation if kind == "SPOT" else "BEST_FIT_PROGRESSIVE",
            "minvCpus": 0,
            "maxvCpus": c.max_vcpus,
            "instanceTypes": list(c.instance_types),
            "subnets": list(c.subnets),
            "securityGroupIds": list(c.security_groups),
            "instanceRole": c.instance_role,
            "tags": {"spot-workflows": c.name_prefix},
        }
        params: dict[str, Any] = {
            "computeEnvironmentName": name,
            "type": "MANAGED",
            "state": "ENABLED",
            "computeResources": resources,
            "tags": {"spot-workflows": c.name_prefix},
        }
        if c.service_role:
            params["serviceRole"] = c.service_role
        self.call(
            self.client("batch"),
            "create_compute_environment",
            what=f"compute environment {name!r}",
            **params,
        )

    def _wait_valid(self, name: str) -> None:
        waited = 0.0
        while True:
            ce = self._ce(name) or {}
            status = ce.get("status")
            if status == "VALID":
                return
            if status == "INVALID":
                raise BackendError(
                    f"compute environment {name!r} is INVALID: {ce.get('statusReason')}; fix "
                    "the roles, subnets or instance types, delete it, and run bootstrap again"
                )
            if waited >= self.wait_timeout_s:
                raise BackendError(
                    f"compute environment {name!r} is still {status} after {waited:.0f}s; "
                    "run bootstrap again later"
                )
            self.sleep(5.0)
            waited += 5.0
