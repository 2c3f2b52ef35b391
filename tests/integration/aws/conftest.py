"""A real moto server (DESIGN §7): boto3 talks HTTP to it; no Docker, no cloud.

One ``ThreadedMotoServer`` per session on 127.0.0.1 (port 0); Batch runs in moto's simple mode
(``{"batch": {"use_docker": false}}``: jobs finish at submit, and fail instead when
``MOTO_SIMPLE_BATCH_FAIL_AFTER`` is set). Every test starts from a reset server.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from spot_workflows.backends.aws_batch import AwsBatchBackend
from spot_workflows.backends.aws_bootstrap import Bootstrap, BootstrapConfig
from spot_workflows.runner import RunnerEvent
from spot_workflows.runtime.store import CheckpointStore

REGION = "us-east-1"
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "batch.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


@dataclass
class Moto:
    url: str

    def post(self, path: str, body: Any = b"") -> bytes:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        kind = "text/plain" if isinstance(body, bytes) else "application/json"
        req = urllib.request.Request(
            self.url + path, data=data, method="POST", headers={"Content-Type": kind}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def client(self, service: str, **kw: Any) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **kw)

    def batch_docker_mode(self, on: bool) -> None:
        """Batch's threaded job model (``use_docker``) walks SUBMITTED -> ... -> RUNNING."""
        self.post("/moto-api/config", {"batch": {"use_docker": on}})

    def job_transition(self, transition: dict | None) -> None:
        if transition is None:
            self.post("/moto-api/state-manager/unset-transition", {"model_name": "batch::job"})
        else:
            self.post(
                "/moto-api/state-manager/set-transition",
                {"model_name": "batch::job", "transition": transition},
            )

    def enforce_auth(self, on: bool) -> None:
        """moto checks signatures and IAM policies from now on (or stops checking)."""
        self.post("/moto-api/reset-auth", b"0" if on else b"inf")

    @property
    def s3_options(self) -> dict:
        return {"endpoint_url": self.url, "skip_instance_cache": True}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Moto]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield Moto(url=f"http://{host}:{port}")
        finally:
            server.stop()


@pytest.fixture
def moto(moto_server: Moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
    # moto keeps its state per process, shared by every server in it: start clean even if
    # another test module (e.g. the Prefect-on-AWS e2e test) ran its own server before us.
    moto_server.post("/moto-api/reset")
    moto_server.batch_docker_mode(False)
    yield moto_server
    moto_server.enforce_auth(False)
    moto_server.job_transition(None)
    moto_server.batch_docker_mode(False)
    moto_server.post("/moto-api/reset")


@dataclass
class Infra:
    moto: Moto
    boot: Bootstrap
    outputs: dict[str, str]
    bucket: str = "ckpt"

    def backend(self, **kw: Any) -> AwsBatchBackend:
        kw.setdefault("sleep", lambda s: None)
        return AwsBatchBackend(
            spot_queue=self.outputs["spot_queue"],
            on_demand_queue=self.outputs["on_demand_queue"],
            region=REGION,
            endpoint_url=self.moto.url,
            **kw,
        )

    def store(self, key: str) -> CheckpointStore:
        return CheckpointStore(f"s3://{self.bucket}/{key}", storage_options=self.moto.s3_options)

    def jobs(self, queue: str) -> list[dict]:
        """Every job in ``queue``, whatever its status (one list_jobs call per status)."""
        batch = self.moto.client("batch")
        out: dict[str, dict] = {}
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING"):
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                out[j["jobId"]] = j
        for status in ("SUCCEEDED", "FAILED"):
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                out[j["jobId"]] = j
        return list(out.values())


def make_roles(moto: Moto) -> str:
    iam = moto.client("iam")
    role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
    return role


def make_boot_config(moto: Moto, **kw: Any) -> BootstrapConfig:
    ec2 = moto.client("ec2")
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:3]]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"][:1]]
    kw.setdefault("service_role", make_roles(moto))
    return BootstrapConfig(region=REGION, subnets=subnets, security_groups=groups, **kw)


@pytest.fixture
def boot_config():
    """``boot_config(moto, **overrides)``: a BootstrapConfig on moto's default VPC + IAM roles."""
    return make_boot_config


@pytest.fixture
def infra(moto: Moto) -> Infra:
    boot = Bootstrap(config=make_boot_config(moto), endpoint_url=moto.url)
    boot.apply()
    moto.client("s3").create_bucket(Bucket="ckpt")
    return Infra(moto=moto, boot=boot, outputs=boot.outputs())


@dataclass
class Market:
    """The next submissions fail with these Batch reasons (in order), then jobs succeed.

    moto's simple Batch fails a job at submit while MOTO_SIMPLE_BATCH_FAIL_AFTER=0 is set;
    ``terminate_job`` then gives it the reason AWS would report (e.g. ``Host EC2 ...``).
    """

    moto: Moto
    monkeypatch: pytest.MonkeyPatch
    reasons: list[str]
    events: list[RunnerEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.batch = self.moto.client("batch")
        self._arm()

    def _arm(self) -> None:
        if self.reasons:
            self.monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
        else:
            self.monkeypatch.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)

    def on_event(self, event: RunnerEvent) -> None:
        self.events.append(event)
        if event.kind == "submitted" and self.reasons:
            assert event.attempt is not None and event.attempt.job_id
            self.batch.terminate_job(jobId=event.attempt.job_id, reason=self.reasons.pop(0))
            self._arm()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def market_factory(moto: Moto, monkeypatch: pytest.MonkeyPatch):
    return lambda reasons: Market(moto=moto, monkeypatch=monkeypatch, reasons=list(reasons))


class FakeClock:
    """The runner's clock and sleep: sleeping advances time without waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()
