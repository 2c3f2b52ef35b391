"""GCP Batch job building, naming and status parsing: pure, no server."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials
from google.cloud import batch_v1

from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.backends.gcp_errors import call, translate
from spot_workflows.backends.gcp_status import (
    gcp_job_id,
    gcp_label_value,
    job_step_key,
    observe_job,
)
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CredentialsError,
    NotFoundError,
)

JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")
PM = batch_v1.AllocationPolicy.ProvisioningModel
State = batch_v1.JobStatus.State


def backend(**kw) -> GcpBatchBackend:
    client = batch_v1.BatchServiceClient(credentials=AnonymousCredentials())
    return GcpBatchBackend(project="proj", region="us-central1", client=client, **kw)


def spec(**kw) -> StepSpec:
    base = {
        "key": "train",
        "command": ["python", "train.py"],
        "checkpoint_uri": "gs://b/ckpt/train",
        "image": "img:1",
    }
    return StepSpec(**{**base, **kw})


def build(b: GcpBatchBackend | None = None, capacity=Capacity.SPOT, **spec_kw) -> batch_v1.Job:
    b = b or backend()
    return b.build_job(spec(**spec_kw), job_name="train-abc123-a1", attempt=1, capacity=capacity)


# -- names and labels ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "train-abc123-a1",
        "Train-ABC-a1",
        "9lives-abc-a2",
        "x" * 120 + "-abc123-a3",
        "a--b---c-a1",
        "-",
        "step-with-trailing-",
    ],
)
def test_job_ids_are_valid_and_deterministic(name):
    job_id = gcp_job_id(name)
    assert JOB_ID.match(job_id), job_id
    assert gcp_job_id(name) == job_id


def test_job_ids_keep_valid_names_and_never_collide():
    assert gcp_job_id("train-abc123-a1") == "train-abc123-a1"
    names = ["Train-abc-a1", "train-abc-a1", "x" * 100 + "-a1", "x" * 100 + "-a2"]
    assert len({gcp_job_id(n) for n in names}) == len(names)


@pytest.mark.parametrize("key", ["train", "Finetune.v2=x", "a" * 200, "step_1-b"])
def test_label_values_follow_gcp_rules(key):
    assert LABEL.match(gcp_label_value(key))
    assert gcp_label_value(key) == gcp_label_value(key)
    assert (gcp_label_value(key) == key) == (LABEL.match(key) is not None)


# -- building the job ---------------------------------------------------------------------------


def test_spot_and_standard_provisioning_models():
    assert PM.STANDARD == 1 and PM.SPOT == 2 and PM.PREEMPTIBLE == 3
    spot = build().allocation_policy.instances[0].policy.provisioning_model
    std = build(capacity=Capacity.ON_DEMAND).allocation_policy.instances[0].policy
    assert (spot, std.provisioning_model) == (PM.SPOT, PM.STANDARD)


def test_minimal_job_has_no_gpu_no_retry_policy_and_cloud_logging():
    job = build()
    task = job.task_groups[0].task_spec
    assert task.max_retry_count == 0 and list(task.lifecycle_policies) == []
    slot = job.allocation_policy.instances[0]
    assert list(slot.policy.accelerators) == [] and slot.install_gpu_drivers is False
    assert slot.policy.machine_type == ""  # Batch chooses from cpu/memory
    assert job.logs_policy.destination == batch_v1.LogsPolicy.Destination.CLOUD_LOGGING
    assert "max_run_duration" not in task and list(job.notifications) == []
    assert job.labels["spot-workflows-step"] == "train"


def test_instance_type_from_the_step_and_implied_gpus_on_accelerator_machines():
    job = build(instance_types=["a2-highgpu-1g"], gpus=1)
    slot = job.allocation_policy.instances[0]
    assert slot.policy.machine_type == "a2-highgpu-1g"
    assert list(slot.policy.accelerators) == [] and slot.install_gpu_drivers is True


def test_accelerator_count_defaults_to_the_steps_gpus():
    job = build(backend(accelerator_type="nvidia-l4"), gpus=4)
    (acc,) = job.allocation_policy.instances[0].policy.accelerators
    assert (acc.type_, acc.count) == ("nvidia-l4", 4)
    drivers_off = build(backend(accelerator_type="nvidia-l4", install_gpu_drivers=False), gpus=1)
    assert drivers_off.allocation_policy.instances[0].install_gpu_drivers is False


def test_notice_source_is_gcp_unless_the_step_chose_one():
    env = build().task_groups[0].task_spec.environment.variables
    assert env["SPOT_NOTICE_SOURCE"] == "gcp"
    env = build(notice_source="local").task_groups[0].task_spec.environment.variables
    assert env["SPOT_NOTICE_SOURCE"] == "local"


@pytest.mark.parametrize(
    "spec_kw,match",
    [
        ({"image": None}, "no image"),
        ({"gpus": 1}, "accelerator_type"),
        ({"instance_types": ["n1-standard-4", "n2-standard-4"]}, "one machine type"),
    ],
)
def test_unbuildable_steps_say_what_to_set(spec_kw, match):
    with pytest.raises(ConfigError, match=match):
        build(**spec_kw)


# -- status -> observation ----------------------------------------------------------------------


def at(second: int) -> datetime:
    return datetime.fromtimestamp(1_800_000_000 + second, tz=UTC)


def job_with(state, *events: tuple[int, str, int | None]) -> batch_v1.Job:
    job = batch_v1.Job(name="projects/p/locations/r/jobs/j")
    job.status.state = state
    for second, text, code in events:
        ev = batch_v1.StatusEvent(description=text, event_time=at(second))
        if code is not None:
            ev.task_execution = batch_v1.TaskExecution(exit_code=code)
        job.status.status_events.append(ev)
    return job


PREEMPT = (
    "Task state is updated from RUNNING to FAILED on zones/us-central1-f/instances/123 due to "
    "Spot Preemption with exit code 50001."
)


def test_observe_preempted_job_from_event_text_alone():
    job = job_with(
        State.FAILED,
        (1, "Job state is set from SCHEDULED to RUNNING for job j.", None),
        (9, f'Job failed due to task failure ... task event: "{PREEMPT}"', None),
    )
    obs = observe_job(job)
    assert (obs.state, obs.outcome, obs.exit_code) == (AttemptState.DONE, Outcome.PREEMPTED, 50001)
    assert (obs.zone, obs.instance_id) == ("us-central1-f", "123")
    assert (obs.started_at, obs.ended_at) == (at(1).timestamp(), at(9).timestamp())


def test_observe_uses_the_latest_task_exit_code():
    job = job_with(
        State.FAILED,
        (1, "to RUNNING", None),
        (2, PREEMPT, 50001),  # retried in place...
        (3, "Task state is updated from RUNNING to FAILED ... with exit code 2.", 2),
    )
    obs = observe_job(job)
    assert (obs.outcome, obs.exit_code) == (Outcome.APP_ERROR, 2)


def test_observe_retried_preemption_then_success_and_pending_jobs():
    ok = job_with(State.SUCCEEDED, (1, "to RUNNING", None), (2, PREEMPT, 50001))
    assert observe_job(ok).outcome is Outcome.SUCCEEDED
    queued = observe_job(job_with(State.QUEUED))
    assert (queued.state, queued.started_at, queued.reason) == (
        AttemptState.PENDING,
        None,
        "QUEUED",
    )
    timeout = job_with(State.FAILED, (5, "... with exit code 50005.", 50005))
    assert observe_job(timeout).outcome is Outcome.TIMEOUT


def test_job_step_key_prefers_the_exact_env_value():
    job = build()
    assert job_step_key(job) == "train"
    assert job_step_key(batch_v1.Job(labels={"spot-workflows-step": "x"})) == "x"
    assert job_step_key(batch_v1.Job()) is None


# -- error translation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc,kind,words",
    [
        (auth_exc.DefaultCredentialsError("no ADC"), CredentialsError, "application-default"),
        (gexc.PermissionDenied("denied"), CredentialsError, "roles/batch.jobsEditor"),
        (gexc.Unauthenticated("expired"), CredentialsError, "rejected"),
        (gexc.NotFound("no job"), NotFoundError, "locations/REGION"),
        (gexc.InvalidArgument("bad accelerator"), ConfigError, "accelerator_type"),
        (gexc.ResourceExhausted("quota"), CapacityError, "quota"),
        (gexc.ServiceUnavailable("down"), BackendError, "retried"),
        (gexc.Conflict("odd"), BackendError, "Conflict"),
    ],
)
def test_translate(exc, kind, words):
    err = translate(exc, what="create job j")
    assert type(err) is kind and words in str(err)
    if not isinstance(exc, auth_exc.DefaultCredentialsError):  # that one happens before any call
        assert "create job j" in str(err)


def test_call_retries_only_transient_errors():
    sleeps: list[float] = []
    outcomes = iter([gexc.ServiceUnavailable("x"), gexc.DeadlineExceeded("y"), "ok"])

    def fn():
        item = next(outcomes)
        if isinstance(item, Exception):
            raise item
        return item

    assert call(fn, what="w", tries=3, backoff_s=1, max_backoff_s=1.5, sleep=sleeps.append) == "ok"
    assert sleeps == [1, 1.5]  # capped

    def denied():
        raise gexc.PermissionDenied("no")

    with pytest.raises(CredentialsError):
        call(denied, what="w", sleep=sleeps.append)
    assert sleeps == [1, 1.5]  # not retried


def test_google_is_imported_only_by_the_gcp_backend_modules():
    """The cloud SDK stays in its backend (engine adapters are checked elsewhere)."""
    root = Path(__file__).resolve().parents[2] / "spot_workflows"
    importers = set()
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] in ("airflow", "prefect"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "google" for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers and all(p.startswith("backends/gcp_") for p in importers), importers
