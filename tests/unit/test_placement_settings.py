"""Placements in the backend settings, and in their two views: an Airflow connection's
``placements`` extra (a JSON list, or JSON text) and the Prefect blocks' ``placements`` field.
Old single-queue / single-region configurations are unchanged."""

from __future__ import annotations

import json
import re

import pytest

from spot_workflows.airflow.connections import ConnectionInfo, console_url, settings
from spot_workflows.backends.settings import AwsSettings, GcpSettings, LocalSettings
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError
from spot_workflows.prefect import AwsBatchBackendBlock, GcpBatchBackendBlock, LocalBackendBlock

AWS_PLACEMENTS = [
    {"name": "use1", "queue": "gpu-spot", "region": "us-east-1"},
    {"name": "usw2", "queue": "gpu-spot-west", "region": "us-west-2", "usd_per_hour": 0.42},
    {"name": "od", "capacity": "ON_DEMAND", "queue": "gpu-od"},
]
GCP_PLACEMENTS = [
    {"name": "c1", "region": "us-central1", "zones": ["us-central1-a", "us-central1-b"]},
    {"name": "ew4", "region": "europe-west4"},
    {"name": "od", "capacity": "ON_DEMAND", "region": "us-central1"},
]
WHAT = "connection 'c' extras"


def test_aws_single_queue_settings_are_one_placement_per_capacity():
    s = AwsSettings.load({"spot_queue": "s", "on_demand_queue": "o"}, what=WHAT)
    assert s.placements is None
    assert [(p.name, p.capacity, p.queue, p.region) for p in s.all_placements()] == [
        ("spot", Capacity.SPOT, "s", None),
        ("on-demand", Capacity.ON_DEMAND, "o", None),
    ]


def test_aws_placements_from_a_connection_extra_and_a_block_are_equal():
    as_list = settings(ConnectionInfo("c", "aws", {"placements": AWS_PLACEMENTS}))
    as_text = settings(ConnectionInfo("c", "aws", {"placements": json.dumps(AWS_PLACEMENTS)}))
    block = AwsBatchBackendBlock(placements=AWS_PLACEMENTS)
    assert as_list == as_text == block.settings()
    assert isinstance(as_list, AwsSettings)
    assert as_list.all_placements() == tuple(Placement(**p) for p in AWS_PLACEMENTS)
    assert as_list.placements[1].usd_per_hour == 0.42
    assert (as_list.spot_queue, as_list.on_demand_queue) == (None, None)


def test_gcp_placements_from_a_connection_extra_and_a_block_are_equal():
    conn = settings(
        ConnectionInfo("g", "google_cloud_platform", {"project": "p", "placements": GCP_PLACEMENTS})
    )
    block = GcpBatchBackendBlock(project="p", placements=GCP_PLACEMENTS)
    assert conn == block.settings() and isinstance(conn, GcpSettings)
    assert conn.region is None and conn.home_region() == "us-central1"
    assert conn.placements[0].zones == ("us-central1-a", "us-central1-b")


def test_local_placements_are_markets_and_default_to_none():
    assert LocalSettings().placements is None
    markets = [{"name": "market-a"}, {"name": "market-b"}, {"name": "od", "capacity": "ON_DEMAND"}]
    conn = settings(ConnectionInfo("l", "spot-local", {"placements": markets}))
    assert conn == LocalBackendBlock(placements=markets).settings()
    assert [p.name for p in conn.placements] == ["market-a", "market-b", "od"]


def test_local_placements_reach_the_backend(tmp_path):
    local = LocalSettings(state_dir=str(tmp_path), placements=[{"name": "m-a"}, {"name": "m-b"}])
    backend = local.build_backend()  # not started: no daemon
    assert [p.name for p in backend.placements][:2] == ["m-a", "m-b"]
    assert [p.name for p in LocalSettings(state_dir=str(tmp_path)).build_backend().placements] == [
        "spot",
        "on-demand",
    ]


def one_line(model, data) -> str:
    with pytest.raises(ConfigError) as info:
        model.load(data, what=WHAT)
    text = str(info.value)
    assert text.startswith(f"invalid {WHAT}: ") and "\n" not in text, text
    return text


OD = {"name": "od", "capacity": "ON_DEMAND", "queue": "o"}
BAD = [
    (AwsSettings, {"placements": []}, r"placements: the list is empty; name at least one"),
    (AwsSettings, {"placements": [{"name": "a", "queue": "q"}, {"name": "a", "queue": "r"}, OD]}, r"placements: placement name 'a' appears twice"),
    (AwsSettings, {"placements": [{"name": "a", "queue": "q"}, {"name": "b", "queue": "q"}, OD]}, r"placements: placements 'a' and 'b' are the same place"),
    (AwsSettings, {"placements": [{"name": "a", "queue": "q"}]}, r"placements: AWS Batch needs at least one ON_DEMAND placement"),
    (AwsSettings, {"placements": [{"name": "a"}, OD]}, r"placements: placement 'a' names no queue"),
    (AwsSettings, {"placements": [{"name": "a", "queue": "q", "zones": ["us-east-1a"]}, OD]}, r"placement 'a' lists zones"),
    (AwsSettings, {"placements": [{"name": "a b", "queue": "q"}, OD]}, r"placements\.0\.name: placement name 'a b' is not valid"),
    (AwsSettings, {"placements": [{"name": "a", "queue": "q", "usd_per_hour": -1}, OD]}, r"placements\.0\.usd_per_hour"),
    (AwsSettings, {"placements": "[not json"}, r"placements: placements must be a JSON list"),
    (AwsSettings, {"placements": [OD], "spot_queue": "s"}, r"spot_queue: .*not both"),
    (AwsSettings, {"spot_queue": "s"}, r"on_demand_queue: Field required.*or placements"),
    (GcpSettings, {"project": "p", "placements": []}, r"placements: the list is empty"),
    (GcpSettings, {"project": "p", "placements": [{"name": "a", "region": "us-east1"}, {"name": "b", "region": "us-east1"}]}, r"the same place"),
    (GcpSettings, {"project": "p", "placements": [{"name": "a"}, {"name": "o", "capacity": "ON_DEMAND", "region": "us-east1"}]}, r"placement 'a' names no region and region is not set"),
    (GcpSettings, {"project": "p", "zones": ["us-east1-b"], "placements": GCP_PLACEMENTS}, r"zones: zones and placements are both set"),
    (GcpSettings, {"project": "p"}, r"region: Field required.*or placements"),
    (LocalSettings, {"placements": []}, r"placements: the list is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "data", "says"), BAD)
def test_bad_placements_are_one_line_errors_naming_the_setting(model, data, says):
    text = one_line(model, data)
    assert re.search(says, text), text


def test_old_single_region_configurations_are_unchanged():
    aws = AwsBatchBackendBlock(spot_queue="s", on_demand_queue="o", region_name="eu-west-1")
    assert aws.settings().placements is None and aws.settings().spot_queue == "s"
    gcp = settings(ConnectionInfo("g", "gcp", {"project": "p", "region": "us-central1"}))
    assert gcp.placements is None and gcp.home_region() == "us-central1"


def test_console_url_of_a_job_in_another_region():
    info = ConnectionInfo("a", "aws", {"region_name": "us-east-1", "spot_queue": "s"})
    arn = "arn:aws:batch:us-west-2:123456789012:job/8a1b-22"
    url = console_url(info, arn)
    assert url is not None and "us-west-2.console" in url and url.endswith("#jobs/detail/8a1b-22")
    assert "us-east-1" in (console_url(info, "8a1b-23") or "")
