"""Issue #11, item 2: the orchestrating process (the runner the CLI, the Prefect task and each
Airflow task round run) SIGKILLed at random points; running it again re-attaches: never a
duplicate job, never an attempt missing from (or left open in) the ledger.

``runner_lab.py`` kills real runner processes halfway through each of their first ledger writes
(``SPOT_WORKFLOWS_FAULT=ledger:N``: before/after the write-ahead record, the job id, the
observations, a cancel, the outcome) and at seeded random times, on the local backend (real
subprocess jobs, the simulated market: reclaims, no capacity, app errors) and on AWS Batch (a moto
server, ledger on moto S3), then compares what the backend holds with the ledger.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LAB = HERE / "runner_lab.py"
EXPECTED = {"succeeds": "SUCCEED", "reclaimed": "SUCCEED", "no-capacity": "SUCCEED"}
EXPECTED["app-error"] = "FAIL"

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only (pidfd)")


def run_lab(cfg: dict, tmp: Path, env: dict | None = None) -> list[dict]:
    path = tmp / "lab.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, str(LAB), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["records"]


def check_step(r: dict) -> None:
    """What the backend holds agrees with the ledger, whatever lives were killed."""
    attempts, jobs = r["attempts"], r["jobs"]
    assert r["final"] == EXPECTED[r["scenario"]], r
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    # every attempt closed with an outcome (none left live or half-recorded) ...
    assert all(a["state"] == "DONE" and a["outcome"] for a in attempts), r
    # ... and never mistaken for a cancel from outside (our own cancels keep their meaning)
    assert not any(a["outcome"] == "CANCELLED" for a in attempts), r
    # one job per attempt and one attempt per job: no duplicate submission, no lost attempt
    assert sorted(j["job_id"] for j in jobs) == sorted(a["job_id"] for a in attempts), r
    names = {j["job_id"]: j["job_name"] for j in jobs}
    assert all(names[a["job_id"]] == a["job_name"] for a in attempts), r


@pytest.fixture(scope="module")
def local_records(tmp_path_factory, long_mode) -> list[dict]:
    tmp = tmp_path_factory.mktemp("runner-lab")
    cfg = {
        "kind": "local",
        "root": str(tmp / "steps"),
        "ledger_points": 8 if long_mode else 5,
        "timer_steps": 6 if long_mode else 1,
        "seed": 11,
        "lanes": 4,
    }
    return run_lab(cfg, tmp)


def test_local_runner_killed_anywhere_reattaches_without_duplicates(local_records):
    for r in local_records:
        check_step(r)
        jobs = r["jobs"]
        launched = [j for j in jobs if j["launched"]]
        # the command ran once per launched job (a no-capacity attempt never launched)
        assert sorted(int(n) for n in r["command_runs"]) == sorted(
            a["number"] for a in r["attempts"] if a["job_id"] in {j["job_id"] for j in launched}
        ), r
        # never two workers of the step at once
        spans = sorted((j["started_at"], j["ended_at"]) for j in launched)
        assert all(
            a[1] is not None and a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)
        ), r


def test_local_campaign_killed_runners_at_every_ledger_write_and_at_random(local_records):
    killed = [r for r in local_records if r["killed_lives"]]
    assert len(killed) >= 0.8 * len(local_records)
    points = {f for r in killed for lf in r["lives"] if lf["exit"] == -9 for f in [lf["fault"]]}
    assert {f"ledger:{n}" for n in range(1, 6)} <= points
    assert sum(1 for r in killed for lf in r["lives"] if lf["kill_after"] is not None) >= 4
    # the cancel after a spot capacity timeout was cut at each of its writes and still escalated
    no_cap = [r for r in local_records if r["scenario"] == "no-capacity"]
    for r in no_cap:
        spot, od = r["attempts"]
        assert (spot["outcome"], spot["stopping"], od["capacity"]) == (
            "NO_CAPACITY",
            "NO_CAPACITY",
            "ON_DEMAND",
        )


# -- AWS Batch on a moto server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_infra(tmp_path_factory):
    import boto3
    from moto.server import ThreadedMotoServer

    from spot_workflows.backends.aws_bootstrap import Bootstrap, BootstrapConfig

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        mp.delenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", raising=False)
        for name, value in creds.items():
            mp.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        try:
            import urllib.request

            for path, body in (("/moto-api/reset", b""), ("/moto-api/config", None)):
                data = body if body is not None else b'{"batch": {"use_docker": false}}'
                req = urllib.request.Request(url + path, data=data or b"", method="POST")
                req.add_header("Content-Type", "application/json")
                urllib.request.urlopen(req, timeout=30).read()
            client = lambda svc: boto3.client(svc, endpoint_url=url, region_name="us-east-1")  # noqa: E731
            ec2, iam = client("ec2"), client("iam")
            trust = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "batch.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
            role = iam.create_role(
                RoleName="batch-service", AssumeRolePolicyDocument=json.dumps(trust)
            )
            iam.create_instance_profile(InstanceProfileName="ecsInstanceRole")
            config = BootstrapConfig(
                region="us-east-1",
                subnets=[s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:3]],
                security_groups=[
                    g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"][:1]
                ],
                service_role=role["Role"]["Arn"],
            )
            boot = Bootstrap(config=config, endpoint_url=url)
            boot.apply()
            client("s3").create_bucket(Bucket="ckpt")
            outputs = boot.outputs()
            yield (
                {
                    "kind": "aws",
                    "url": url,
                    "region": "us-east-1",
                    "bucket": "ckpt",
                    "spot_queue": outputs["spot_queue"],
                    "on_demand_queue": outputs["on_demand_queue"],
                    "out": str(tmp_path_factory.mktemp("aws-lab")),
                },
                creds,
            )
        finally:
            server.stop()


def test_aws_runner_killed_at_random_reattaches_without_duplicate_jobs(moto_infra, long_mode):
    cfg, creds = moto_infra
    cfg = {**cfg, "timer_steps": 24 if long_mode else 6, "timer_max_s": 0.6, "lanes": 2}
    records = run_lab(cfg, Path(cfg["out"]), env=creds)
    for r in records:
        check_step(r)
        assert len(r["attempts"]) == 1  # moto's simple Batch: the one job succeeds
    assert sum(r["killed_lives"] for r in records) >= len(records) // 2
