"""google-api-core errors from a real gRPC server, translated into readable package errors."""

from __future__ import annotations

import grpc
import pytest

from spot_workflows.backends.gcp_batch import GcpBatchBackend
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity
from spot_workflows.errors import (
    BackendError,
    CapacityError,
    ConfigError,
    CredentialsError,
)

SPEC = StepSpec(key="s", command=["python", "x.py"], checkpoint_uri="file:///tmp/s", image="img")


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def backend(batch, sleeps) -> GcpBatchBackend:
    return GcpBatchBackend(
        project="proj",
        region="us-central1",
        client=batch.client(),
        backoff_s=0.01,
        tries=3,
        sleep=sleeps.append,
    )


def submit(backend: GcpBatchBackend) -> str:
    return backend.submit(SPEC, job_name="s-abc-a1", attempt=1, capacity=Capacity.SPOT)


def test_permission_denied_says_which_roles_to_grant(batch, backend):
    batch.fail_next(
        "CreateJob",
        grpc.StatusCode.PERMISSION_DENIED,
        "Permission 'batch.jobs.create' denied on 'projects/proj/locations/us-central1'",
    )
    with pytest.raises(CredentialsError) as err:
        submit(backend)
    text = str(err.value)
    assert "batch.jobs.create" in text and "roles/batch.jobsEditor" in text
    assert isinstance(err.value, BackendError)
    assert batch.count("CreateJob") == 1  # not retried


def test_invalid_machine_type_is_a_config_error_naming_the_fields(batch, backend):
    batch.fail_next(
        "CreateJob",
        grpc.StatusCode.INVALID_ARGUMENT,
        "Invalid resource field value in the request: machine type n1-bogus-8 does not exist "
        "in zone us-central1-a",
    )
    with pytest.raises(ConfigError) as err:
        submit(backend)
    text = str(err.value)
    assert "n1-bogus-8" in text and "machine_type" in text and "accelerator_type" in text


def test_quota_is_a_capacity_error(batch, backend):
    batch.fail_next(
        "CreateJob", grpc.StatusCode.RESOURCE_EXHAUSTED, "Quota 'NVIDIA_L4_GPUS' exceeded"
    )
    with pytest.raises(CapacityError, match="NVIDIA_L4_GPUS.*request more quota"):
        submit(backend)


def test_no_credentials_says_how_to_log_in(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(CredentialsError) as err:
        GcpBatchBackend(project="proj", region="us-central1")
    text = str(err.value)
    assert "missing-key.json" in text and "gcloud auth application-default login" in text


def test_unauthenticated_call_is_a_credentials_error(batch, backend):
    batch.fail_next("GetJob", grpc.StatusCode.UNAUTHENTICATED, "Request had invalid credentials")
    with pytest.raises(CredentialsError, match="rejected the credentials"):
        backend.describe(["projects/proj/locations/us-central1/jobs/x"])


def test_transient_errors_are_retried_with_bounded_backoff(batch, backend, sleeps):
    name = submit(backend)
    batch.fail_next("GetJob", grpc.StatusCode.UNAVAILABLE, "try again", times=2)
    assert backend.describe([name])[name].state.value == "PENDING"
    assert batch.count("GetJob") == 3 and sleeps == [0.01, 0.02]

    batch.fail_next("GetJob", grpc.StatusCode.DEADLINE_EXCEEDED, "slow", times=3)
    with pytest.raises(BackendError, match="did not answer.*re-attaches"):
        backend.describe([name])
    assert batch.count("GetJob") == 6  # gave up after `tries`


def test_unknown_and_gone_jobs_are_not_errors(batch, backend):
    gone = "projects/proj/locations/us-central1/jobs/never-made"
    assert backend.describe([gone]) == {}
    assert backend.find("never-made") is None
    backend.cancel(gone, reason="spot-workflows: test")  # idempotent
    name = submit(backend)
    backend.cancel(name, reason="spot-workflows: test")
    batch.advance()  # deletion completes
    backend.cancel(name, reason="spot-workflows: test")
    assert backend.describe([name]) == {}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"region": "us-central1/x"}, "region"),
        ({"zones": ["europe-west4-a"]}, "not in region"),
        ({"in_place_retries": 11}, "0..10"),
        ({"labels": {"Team": "ml"}}, "label"),
        ({"notification_topic": "batch-events"}, "projects/PROJECT/topics/TOPIC"),
    ],
)
def test_bad_settings_fail_at_construction(batch, kwargs, match):
    settings = {"project": "proj", "region": "us-central1", "client": batch.client(), **kwargs}
    with pytest.raises(ConfigError, match=match):
        GcpBatchBackend(**settings)
