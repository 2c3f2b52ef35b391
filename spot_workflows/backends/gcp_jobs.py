"""The GCP Batch job of one attempt: a ``batch_v1.Job`` built from a StepSpec (pure: no API call).

The container task (command, vCPUs and memory, the worker environment, in-place retries on the
spot preemption exit code, the run-time limit), its allocation policy (SPOT or STANDARD
provisioning, machine type, accelerators and GPU drivers, allowed zones, service account), the
spot-workflows labels, Cloud Logging, and optional Pub/Sub notifications. The backend
(:mod:`.gcp_batch`) passes its settings in and sends the job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta

from google.cloud import batch_v1

from spot_workflows.backends.base import attempt_env
from spot_workflows.backends.gcp_status import (
    LABEL_ATTEMPT,
    LABEL_CAPACITY,
    LABEL_MANAGED,
    LABEL_STEP,
    PREEMPTION_EXIT_CODE,
    PROVISIONING,
    gcp_label_value,
)
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity
from spot_workflows.errors import ConfigError

GPU_MACHINES = ("a2-", "a3-", "a4-", "g2-", "g4-")  # accelerator-optimized: GPUs are implied


def batch_job(
    spec: StepSpec,
    *,
    attempt: int,
    capacity: Capacity,
    zones: Sequence[str],
    machine_type: str | None,
    accelerator_type: str | None,
    accelerator_count: int | None,
    install_gpu_drivers: bool | None,
    in_place_retries: int,
    labels: Mapping[str, str],
    service_account: str | None,
    notification_topic: str | None,
) -> batch_v1.Job:
    """The ``batch_v1.Job`` for one attempt of ``spec`` on ``capacity``, allowed in ``zones``
    (none: anywhere in the region); the other arguments are the backend's settings
    (see :class:`~spot_workflows.backends.gcp_batch.GcpBatchBackend`)."""
    if not spec.image:
        raise ConfigError(
            f"step {spec.key!r} has no image: GCP Batch runs containers, set StepSpec.image "
            "(e.g. us-docker.pkg.dev/PROJECT/REPO/train:1)"
        )
    if machine_type is None and len(spec.instance_types) > 1:
        raise ConfigError(
            f"GCP Batch takes one machine type per job; step {spec.key!r} lists "
            f"{spec.instance_types}: pass machine_type= or keep one instance type"
        )
    if machine_type is None and spec.instance_types:
        machine_type = spec.instance_types[0]
    gpu_count = accelerator_count or spec.gpus
    accelerators = []
    if accelerator_type:
        accelerators.append(
            batch_v1.AllocationPolicy.Accelerator(type_=accelerator_type, count=max(1, gpu_count))
        )
    elif spec.gpus and not (machine_type or "").startswith(GPU_MACHINES):
        raise ConfigError(
            f"step {spec.key!r} asks for {spec.gpus} GPU(s): set accelerator_type= (e.g. "
            "nvidia-l4, nvidia-tesla-t4) or an accelerator-optimized machine_type (a2-, a3-, g2-)"
        )
    drivers = install_gpu_drivers
    if drivers is None:
        drivers = bool(accelerators) or bool(spec.gpus)
    extra = {"SPOT_NOTICE_SOURCE": "gcp"} if spec.notice_source == "auto" else None
    env = attempt_env(spec, attempt=attempt, capacity=capacity, extra=extra)
    task = batch_v1.TaskSpec(
        runnables=[
            batch_v1.Runnable(
                container=batch_v1.Runnable.Container(
                    image_uri=spec.image,
                    entrypoint=spec.command[0],
                    commands=list(spec.command[1:]),
                )
            )
        ],
        compute_resource=batch_v1.ComputeResource(
            cpu_milli=max(1, round(spec.vcpus * 1000)), memory_mib=spec.memory_mib
        ),
        environment=batch_v1.Environment(variables=env),
        max_retry_count=in_place_retries,
    )
    if in_place_retries:
        task.lifecycle_policies = [
            batch_v1.LifecyclePolicy(
                action=batch_v1.LifecyclePolicy.Action.RETRY_TASK,
                action_condition=batch_v1.LifecyclePolicy.ActionCondition(
                    exit_codes=[PREEMPTION_EXIT_CODE]
                ),
            )
        ]
    if spec.timeout_s:
        task.max_run_duration = timedelta(seconds=math.ceil(spec.timeout_s))
    job_labels = {
        **labels,
        LABEL_STEP: gcp_label_value(spec.key),
        LABEL_ATTEMPT: str(attempt),
        LABEL_CAPACITY: capacity.value.lower(),
        LABEL_MANAGED: "spot-workflows",
    }
    policy = batch_v1.AllocationPolicy.InstancePolicy(
        provisioning_model=PROVISIONING[capacity], accelerators=accelerators
    )
    if machine_type:
        policy.machine_type = machine_type
    allocation = batch_v1.AllocationPolicy(
        instances=[
            batch_v1.AllocationPolicy.InstancePolicyOrTemplate(
                policy=policy, install_gpu_drivers=drivers
            )
        ],
        labels=job_labels,
    )
    if zones:
        allocation.location = batch_v1.AllocationPolicy.LocationPolicy(
            allowed_locations=[f"zones/{z}" for z in zones]
        )
    if service_account:
        allocation.service_account = batch_v1.ServiceAccount(email=service_account)
    job = batch_v1.Job(
        task_groups=[batch_v1.TaskGroup(task_spec=task, task_count=1, parallelism=1)],
        allocation_policy=allocation,
        labels=job_labels,
        logs_policy=batch_v1.LogsPolicy(destination=batch_v1.LogsPolicy.Destination.CLOUD_LOGGING),
    )
    if notification_topic:
        kinds = batch_v1.JobNotification.Type
        job.notifications = [
            batch_v1.JobNotification(
                pubsub_topic=notification_topic,
                message=batch_v1.JobNotification.Message(type_=kind),
            )
            for kind in (kinds.JOB_STATE_CHANGED, kinds.TASK_STATE_CHANGED)
        ]
    return job
