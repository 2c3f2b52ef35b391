"""Prefect blocks and Airflow connections are two views of one settings model per backend: equal
settings from equivalent configurations, the same names, old names of either engine mapped with a
DeprecationWarning, and saved block documents of the former fields still loading."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from spot_workflows.airflow.connections import ConnectionInfo, settings
from spot_workflows.backends.settings import AwsSettings, GcpSettings, LocalSettings
from spot_workflows.prefect import AwsBatchBackendBlock, GcpBatchBackendBlock, LocalBackendBlock

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
KEY = {"type": "service_account", "project_id": "key-proj", "client_email": "sa@key-proj.iam"}

FORMER_FIELDS = {
    LocalBackendBlock: {
        "checkpoint_root", "state_dir", "reclaim_after_s", "spot_unavailable",
        "reclaim_after_checkpoint", "poisson_rate_per_hour", "market_seed", "trace_path",
        "trace_tick_s", "notice_window_s", "grace_s",
    },
    AwsBatchBackendBlock: {
        "checkpoint_root", "spot_queue", "on_demand_queue", "region_name", "profile_name",
        "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "endpoint_url",
        "definition_prefix", "batch_retries", "job_role_arn", "wrap", "tags",
    },
    GcpBatchBackendBlock: {
        "checkpoint_root", "project", "region", "service_account_info", "service_account_file",
        "machine_type", "accelerator_type", "zones", "service_account", "labels",
    },
}  # fmt: skip
"""The blocks' fields before they became views of the settings models."""


@pytest.mark.parametrize("block", list(FORMER_FIELDS), ids=lambda b: b.__name__)
def test_blocks_keep_their_fields_and_have_every_setting(block):
    assert FORMER_FIELDS[block] <= set(block.model_fields)
    assert set(block.settings_model.model_fields) <= set(block.model_fields)
    for name, info in block.settings_model.model_fields.items():
        mine = block.model_fields[name]
        assert (mine.annotation, mine.default, mine.description) == (
            info.annotation,
            info.default,
            info.description,
        ), name


def test_local_airflow_extras_and_block_fields_give_equal_settings(tmp_path):
    state = str(tmp_path / "cloud")
    block = LocalBackendBlock(
        state_dir=state, reclaim_after_s=[3, 4], spot_unavailable=[(0, 5)], notice_window_s=1
    )
    conn = ConnectionInfo(
        "l", "spot-local", {"state_dir": state, "reclaim_after_s": [3, 4], "spot_unavailable": [[0, 5]], "notice_window_s": 1}
    )  # fmt: skip
    assert block.settings() == settings(conn)
    assert block.make_market() == settings(conn).make_market()
    with pytest.warns(DeprecationWarning) as from_airflow:
        former_airflow = settings(
            ConnectionInfo("l", "spot_local", {"state_dir": state, "reclaims": [3, 4], "unavailable": [[0, 5]], "notice_window_s": 1})
        )  # fmt: skip
    with pytest.warns(DeprecationWarning) as on_a_block:
        airflow_names_on_a_block = LocalBackendBlock(
            state_dir=state, reclaims=[3, 4], unavailable=[(0, 5)], notice_window_s=1
        )
    assert former_airflow == block.settings() == airflow_names_on_a_block.settings()
    assert airflow_names_on_a_block.reclaim_after_s == [3.0, 4.0]
    for caught in (from_airflow, on_a_block):
        assert sorted(str(w.message).split(": ")[-1] for w in caught) == [
            "rename it 'reclaim_after_s'",
            "rename it 'spot_unavailable'",
        ]


def test_aws_connection_and_block_give_equal_settings():
    common = {
        "spot_queue": "gpu-spot",
        "on_demand_queue": "gpu-od",
        "region_name": "eu-west-1",
        "events_queue_url": "https://sqs.eu-west-1.amazonaws.com/1/ev",
        "batch_retries": 2,
        "wrap": True,
        "tags": {"team": "ml"},
        "checkpoint_root": "s3://bucket/ckpt",
    }
    block = AwsBatchBackendBlock(**common, aws_access_key_id="AKIA", aws_secret_access_key=SECRET)
    conn = ConnectionInfo("a", "aws", common, login="AKIA", password=SECRET)
    assert block.settings() == settings(conn)
    assert isinstance(block.settings(), AwsSettings)
    ours = block.settings().build_backend()
    theirs = settings(conn).build_backend()
    assert (ours.queues, ours.region, ours.tags, ours.batch_retries, ours.wrap) == (
        theirs.queues,
        theirs.region,
        theirs.tags,
        theirs.batch_retries,
        theirs.wrap,
    )


def test_gcp_connection_and_block_give_equal_settings():
    block = GcpBatchBackendBlock(
        project="p1",
        region="us-central1",
        service_account_info=json.dumps(KEY),
        zones=["us-central1-a"],
        emulator_host="127.0.0.1:1",
    )
    new_names = {
        "project": "p1",
        "region": "us-central1",
        "service_account_info": json.dumps(KEY),
        "zones": ["us-central1-a"],
        "emulator_host": "127.0.0.1:1",
    }
    google_provider = {
        "extra__google_cloud_platform__project": "p1",
        "extra__google_cloud_platform__keyfile_dict": KEY,
        "region": "us-central1",
        "zones": ["us-central1-a"],
        "emulator_host": "127.0.0.1:1",
    }
    assert block.settings() == settings(ConnectionInfo("g", "google_cloud_platform", new_names))
    assert block.settings() == settings(ConnectionInfo("g", "gcp", google_provider))
    former = {k: v for k, v in new_names.items() if k != "region"} | {"location": "us-central1"}
    with pytest.warns(DeprecationWarning, match="'location' is deprecated: rename it 'region'"):
        assert block.settings() == settings(ConnectionInfo("g", "gcp", former))
    assert isinstance(block.settings(), GcpSettings)


def test_saved_documents_of_the_former_fields_load(client):
    former = {
        LocalBackendBlock: {"reclaim_after_s": [2.0], "grace_s": 1.0},
        AwsBatchBackendBlock: {
            "spot_queue": "s",
            "on_demand_queue": "o",
            "aws_access_key_id": "AKIA",
            "aws_secret_access_key": SECRET,
            "batch_retries": 1,
        },
        GcpBatchBackendBlock: {"region": "us-central1", "service_account_file": "/k.json"},
    }
    for block_class, data in former.items():
        name = f"former-{block_class.get_block_type_slug()}"
        block_class(**data).save(name, overwrite=True)
        loaded = block_class.load(name)
        for field, value in data.items():
            got = getattr(loaded, field)
            got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
            assert got == value, (block_class.__name__, field)


def test_block_errors_name_the_field():
    with pytest.raises(ValidationError, match="poisson_rate_per_hour.*choose one spot market"):
        LocalBackendBlock(reclaim_after_s=[1.0], poisson_rate_per_hour=2)
    with pytest.raises(ValidationError, match="emulator_host.*keep one"):
        GcpBatchBackendBlock(region="us-central1", api_endpoint="a:443", emulator_host="b:1")


def test_local_settings_in_both_engines_are_the_same_model():
    assert LocalBackendBlock.settings_model is LocalSettings
