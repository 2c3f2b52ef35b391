"""Where an AWS Batch job runs: the ECS container instance of its last attempt, resolved to the
EC2 instance id, instance type and availability zone (for cost, and for tying interruption
warnings to steps). Best effort: a lookup that fails leaves the observation as it was."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spot_workflows.backends.aws_errors import AwsCaller, make_client
from spot_workflows.backends.aws_jobs import cluster_of, container_instance_arn
from spot_workflows.core.outcomes import Observation
from spot_workflows.errors import SpotWorkflowsError

log = logging.getLogger("spot_workflows.aws")


class JobHosts:
    """The hosts a backend's jobs run on: each ECS container instance looked up once, with one
    ECS client per region (made when first needed, unless one is given for the home region)."""

    def __init__(
        self,
        *,
        home: str,
        caller: Callable[[str], AwsCaller],
        session: Any = None,
        endpoint_url: str | None = None,
        ecs_client: Any = None,
    ) -> None:
        self._home = home
        self._caller = caller
        self._session, self._endpoint_url = session, endpoint_url
        self._ecs: dict[str, Any] = {home: ecs_client} if ecs_client else {}
        self._hosts: dict[str, dict[str, str | None]] = {}  # container instance ARN -> host

    def with_host(self, obs: Observation, job: Mapping[str, Any]) -> Observation:
        """``obs`` with the instance id, type and zone of the host that ran ``job``, where it
        has none of its own (unchanged when the host is unknown)."""
        arn = container_instance_arn(job)
        host = self._host(arn) if arn else None
        if not host:
            return obs
        update = {k: v for k, v in host.items() if v and getattr(obs, k) is None}
        return obs.model_copy(update=update) if update else obs

    def _host(self, arn: str) -> dict[str, str | None] | None:
        if arn not in self._hosts:
            region = arn.split(":")[3] or self._home
            try:
                ecs = self._ecs_client(region)
                self._hosts.update(container_hosts(ecs, [arn], call=self._caller(region)))
            except SpotWorkflowsError as exc:  # best effort: never fail a describe over it
                log.debug("could not resolve ECS container instance %s: %s", arn, exc)
                return None
        return self._hosts.get(arn)

    def _ecs_client(self, region: str) -> Any:
        if region not in self._ecs:
            self._ecs[region] = make_client(
                "ecs", session=self._session, region=region, endpoint_url=self._endpoint_url
            )
        return self._ecs[region]


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
