"""Clear errors, bounded retries and no duplicates when AWS misbehaves (real HTTP throughout)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from spot_workflows.backends.aws_batch import AwsBatchBackend
from spot_workflows.backends.aws_errors import RetryPolicy
from spot_workflows.backends.aws_iam import allows, iam_policy
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity
from spot_workflows.errors import BackendError, ConfigError, CredentialsError, NotFoundError

SPEC = StepSpec(key="errs", command=["true"], image="busybox", checkpoint_uri="s3://ckpt/errs")


def test_unknown_queue_names_the_queue_and_the_fix(infra):
    backend = AwsBatchBackend(
        spot_queue="gpu-spot-typo",
        on_demand_queue=infra.outputs["on_demand_queue"],
        region="us-east-1",
        endpoint_url=infra.moto.url,
    )
    with pytest.raises(NotFoundError) as err:
        backend.submit(SPEC, job_name="errs-a1", attempt=1, capacity=Capacity.SPOT)
    msg = str(err.value)
    assert "'gpu-spot-typo' does not exist in region us-east-1" in msg
    assert "spot-workflows aws bootstrap" in msg
    with pytest.raises(NotFoundError, match="gpu-spot-typo"):
        backend.find("errs-a1")


def test_rejected_credentials_say_where_credentials_come_from(infra):
    session = boto3.session.Session(
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    backend = infra.backend(session=session)
    infra.moto.enforce_auth(True)
    with pytest.raises(CredentialsError) as err:
        backend.describe(["00000000-0000-0000-0000-000000000000"])
    msg = str(err.value)
    assert "rejected the credentials for batch:DescribeJobs (InvalidClientTokenId" in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_PROFILE" in msg
    assert "wJalrXUtnFEMI" not in msg and "AKIAIOSFODNN7EXAMPLE" not in msg


def test_access_denied_points_at_the_iam_policy(infra):
    iam = infra.moto.client("iam")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    session = boto3.session.Session(
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )
    backend = infra.backend(session=session)
    infra.moto.enforce_auth(True)
    with pytest.raises(CredentialsError) as err:
        backend.cancel("00000000-0000-0000-0000-000000000000", reason="test")
    msg = str(err.value)
    assert "not allowed to call batch:TerminateJob" in msg
    assert "--print-iam-policy" in msg
    assert allows(iam_policy(), "batch:TerminateJob")  # ... which grants it


def test_missing_credentials_are_a_credentials_error(infra, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    backend = infra.backend()
    with pytest.raises(CredentialsError, match="no usable AWS credentials for batch:DescribeJobs"):
        backend.describe(["00000000-0000-0000-0000-000000000000"])


def test_describe_asks_for_at_most_100_ids_per_call(infra):
    batch = infra.moto.client("batch")
    backend = infra.backend()
    jd = backend.ensure_job_definition(SPEC)
    ids = [
        batch.submit_job(
            jobName=f"many-{i}", jobQueue=infra.outputs["spot_queue"], jobDefinition=jd
        )["jobId"]
        for i in range(130)
    ]
    sizes = []
    backend.batch.meta.events.register(
        "before-parameter-build.batch.DescribeJobs",
        lambda params, **_: sizes.append(len(params["jobs"])),
    )
    seen = backend.describe(ids)
    assert sizes == [100, 30]
    assert set(seen) == set(ids)
    assert {o.outcome.value for o in seen.values()} == {"SUCCEEDED"}


# -- a real HTTP server in front of (or instead of) AWS ---------------------------------------


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def failing_handler(status: int, code: str, fail_times: int, hits: list[str]):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hits.append(self.path)
            if len(hits) <= fail_times:
                body, st = json.dumps({"__type": code, "message": "slow down"}).encode(), status
            else:
                body, st = json.dumps({"jobs": []}).encode(), 200
            self.send_response(st)
            self.send_header("Content-Type", "application/json")
            self.send_header("x-amzn-ErrorType", code if st != 200 else "")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def backend_at(url: str, *, attempts: int, slept: list[float]) -> AwsBatchBackend:
    return AwsBatchBackend(
        spot_queue="q-spot",
        on_demand_queue="q-od",
        region="us-east-1",
        endpoint_url=url,
        retry=RetryPolicy(max_attempts=attempts, base_s=0.5, cap_s=2.0),
        sleep=slept.append,
    )


def test_throttling_is_retried_with_backoff_and_then_succeeds():
    hits: list[str] = []
    slept: list[float] = []
    with http_server(failing_handler(429, "TooManyRequestsException", 3, hits)) as url:
        assert backend_at(url, attempts=5, slept=slept).describe(["job-1"]) == {}
    assert len(hits) == 4 and all(h == "/v1/describejobs" for h in hits)
    assert len(slept) == 3 and all(0 <= s <= 2.0 for s in slept)


def test_server_errors_are_retried_a_bounded_number_of_times():
    hits: list[str] = []
    slept: list[float] = []
    with (
        http_server(failing_handler(503, "ServerException", 10**6, hits)) as url,
        pytest.raises(BackendError, match="kept failing batch:DescribeJobs"),
    ):
        backend_at(url, attempts=4, slept=slept).describe(["job-1"])
    assert len(hits) == 4 and len(slept) == 3


def test_client_errors_are_not_retried():
    hits: list[str] = []
    with (
        http_server(failing_handler(400, "ClientException", 10**6, hits)) as url,
        pytest.raises(BackendError, match="AWS refused batch:DescribeJobs"),
    ):
        backend_at(url, attempts=4, slept=[]).describe(["job-1"])
    assert len(hits) == 1


def test_a_lost_submit_answer_is_found_by_name_not_submitted_twice(infra):
    """A proxy forwards SubmitJob to moto but answers 503: AWS took the job, we never heard."""
    upstream = infra.moto.url
    dropped: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            req = urllib.request.Request(upstream + self.path, data=body, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    status, payload = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                status, payload = exc.code, exc.read()
            if self.path == "/v1/submitjob" and not dropped:
                dropped.append(self.path)
                status, payload = 503, b'{"__type": "ServerException", "message": "oops"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    with http_server(Proxy) as url:
        backend = AwsBatchBackend(
            spot_queue=infra.outputs["spot_queue"],
            on_demand_queue=infra.outputs["on_demand_queue"],
            region="us-east-1",
            endpoint_url=url,
            sleep=lambda s: None,
        )
        job_id = backend.submit(SPEC, job_name="errs-lost-a1", attempt=1, capacity=Capacity.SPOT)
    assert dropped == ["/v1/submitjob"]
    jobs = infra.jobs(infra.outputs["spot_queue"])
    assert [j["jobId"] for j in jobs] == [job_id]


def test_bad_backend_settings_fail_at_construction(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ConfigError, match="batch_retries must be between 0 and 9"):
        AwsBatchBackend(spot_queue="a", on_demand_queue="b", batch_retries=10)
    with pytest.raises(ConfigError, match="spot_queue and on_demand_queue"):
        AwsBatchBackend(spot_queue="", on_demand_queue="b")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="AWS_DEFAULT_REGION"):
        AwsBatchBackend(spot_queue="a", on_demand_queue="b")
