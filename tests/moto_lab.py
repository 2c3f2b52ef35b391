"""One way to stand up AWS for tests: a real moto server over HTTP, no Docker, no cloud.

``moto_server()`` starts a ``ThreadedMotoServer`` on 127.0.0.1 (port 0) with fake credentials in
the environment (restored afterwards) and Batch in moto's simple mode (``use_docker: false``:
jobs finish at submit, or fail while ``MOTO_SIMPLE_BATCH_FAIL_AFTER`` is set). moto keeps its
state per process, shared by every server in it, so the server is reset on entry and on exit.
``bootstrap_queues()`` creates what ``spot-workflows aws bootstrap`` needs (IAM role, instance
profile) and applies it: spot and on-demand compute environments and queues, events queue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from spot_workflows.backends.aws_bootstrap import Bootstrap, BootstrapConfig

REGION = "us-east-1"
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""What a process talking to moto needs (and nothing from the developer's real AWS setup)."""
UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")
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

    def reset(self) -> None:
        """Forget every resource, back to moto's simple Batch."""
        self.post("/moto-api/reset")
        self.batch_docker_mode(False)

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


@contextlib.contextmanager
def moto_server() -> Iterator[Moto]:
    """A reset moto server with fake credentials in ``os.environ`` for as long as it runs."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with pytest.MonkeyPatch.context() as mp:
        for var in (*UNSET_AWS_ENV, "MOTO_SIMPLE_BATCH_FAIL_AFTER"):
            mp.delenv(var, raising=False)
        for var, value in FAKE_AWS_ENV.items():
            mp.setenv(var, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        moto = Moto(url=f"http://{host}:{port}")
        try:
            moto.reset()
            yield moto
        finally:
            with contextlib.suppress(OSError):
                moto.post("/moto-api/reset")  # leave no state for other modules' servers
            server.stop()


def make_boot_config(moto: Moto, *, subnets: int = 3, **kw: Any) -> BootstrapConfig:
    """A BootstrapConfig on moto's default VPC, with the IAM role and instance profile made."""
    ec2, iam = moto.client("ec2"), moto.client("iam")
    if "service_role" not in kw:
        role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument=TRUST)
        iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
        kw["service_role"] = role["Role"]["Arn"]
    return BootstrapConfig(
        region=REGION,
        subnets=[s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:subnets]],
        security_groups=[
            g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"][:1]
        ],
        **kw,
    )


def bootstrap_queues(moto: Moto, *, bucket: str | None = "ckpt", **kw: Any) -> Bootstrap:
    """Apply ``spot-workflows aws bootstrap`` on moto (and create ``bucket``); ``outputs()`` of
    the result names the spot and on-demand queues and the events queue."""
    boot = Bootstrap(config=make_boot_config(moto, **kw), endpoint_url=moto.url)
    boot.apply()
    if bucket:
        moto.client("s3").create_bucket(Bucket=bucket)
    return boot
