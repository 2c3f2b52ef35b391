"""AwsSettings against a real moto server: an assumed role's refreshable session, and the backend
and the termination notice source an Airflow connection and the settings build alike."""

from __future__ import annotations

import json

from moto_lab import REGION, TRUST

from spot_workflows.airflow.connections import ConnectionInfo, build_notice_source, settings
from spot_workflows.backends.settings import AwsSettings


def test_role_arn_assumes_the_role_with_refreshable_credentials(moto, monkeypatch):
    role = moto.client("iam").create_role(RoleName="orchestrator", AssumeRolePolicyDocument=TRUST)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.url)
    spot = moto.client("batch")
    chosen = AwsSettings(
        spot_queue="s",
        on_demand_queue="o",
        region_name=REGION,
        endpoint_url=moto.url,
        role_arn=role["Role"]["Arn"],
    )
    session = chosen.boto3_session()
    creds = session.get_credentials()
    assert creds.method == "sts-assume-role"
    assert creds.get_frozen_credentials().access_key.startswith("ASIA")  # temporary keys
    backend = chosen.build_backend()
    assert backend.batch._request_signer._credentials.method == "sts-assume-role"
    assert (
        backend.batch.describe_job_queues()["jobQueues"] == spot.describe_job_queues()["jobQueues"]
    )


def test_an_airflow_connection_and_the_settings_watch_the_same_events_queue(infra):
    extra = {
        "spot_queue": infra.outputs["spot_queue"],
        "on_demand_queue": infra.outputs["on_demand_queue"],
        "events_queue_url": infra.outputs["events_queue_url"],
        "region_name": REGION,
        "endpoint_url": infra.moto.url,
    }
    conn = ConnectionInfo("aws_spot", "aws", extra, login="AKIAFAKE", password="fake-secret")
    assert settings(conn) == AwsSettings(
        **extra, aws_access_key_id="AKIAFAKE", aws_secret_access_key="fake-secret"
    )
    source = build_notice_source(conn, since=None)
    assert source.poll() == []  # a real ReceiveMessage on the bootstrap's queue
    sqs = infra.moto.client("sqs")
    sqs.send_message(QueueUrl=extra["events_queue_url"], MessageBody=json.dumps({"x": 1}))
    assert source.poll() == []  # not an event it knows: consumed, no notice
