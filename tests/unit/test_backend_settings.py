"""The backend settings models (``spot_workflows.backends.settings``) and the Airflow connection
view of them: one name per setting, old names mapped with a DeprecationWarning, one-line errors
naming the setting, and real backends, sessions and notice sources built from them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings

import pytest

from spot_workflows.airflow.connections import (
    BUILTIN_CONNECTIONS,
    LOCAL,
    ConnectionInfo,
    build_backend,
    build_notice_source,
    settings,
)
from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.events import append_event
from spot_workflows.backends.local.market import (
    NeverReclaimed,
    PoissonMarket,
    ScheduledMarket,
    TraceMarket,
)
from spot_workflows.backends.settings import AwsSettings, GcpSettings, LocalSettings
from spot_workflows.errors import ConfigError

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def test_settings_and_termination_import_no_engine():
    code = (
        "import sys, spot_workflows.backends.settings, spot_workflows.termination, "
        "spot_workflows.airflow.connections, spot_workflows.airflow.watch; "
        "sys.exit(bool({'airflow', 'prefect', 'boto3', 'google.cloud.batch_v1'} & set(sys.modules)))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- old names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "old", "new", "value", "base"),
    [
        (LocalSettings, "reclaims", "reclaim_after_s", [3.0], {}),
        (LocalSettings, "unavailable", "spot_unavailable", [(0.0, 60.0)], {}),
        (GcpSettings, "location", "region", "us-central1", {}),
        (GcpSettings, "key_path", "service_account_file", "/keys/sa.json", {"region": "r"}),
        (GcpSettings, "keyfile_dict", "service_account_info", None, {"region": "r"}),
    ],
)
def test_old_names_map_to_the_new_one_with_a_deprecation_warning(model, old, new, value, base):
    if value is None:
        value = {"type": "service_account", "project_id": "p"}
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated: rename it '{new}'"):
        got = model.model_validate({**base, old: value})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        want = model.model_validate({**base, new: value})
    assert got == want


def test_an_old_and_a_new_name_together_are_refused():
    with pytest.raises(ConfigError, match="'reclaims' is the deprecated name of 'reclaim_after_s'"):
        LocalSettings.load({"reclaims": [1], "reclaim_after_s": [2]}, what="x")


def test_old_airflow_extras_still_run_a_local_connection(tmp_path):
    info = ConnectionInfo(
        "old",
        "spot_local",
        {"state_dir": str(tmp_path / "s"), "reclaims": [5.0], "unavailable": [[0, 1]]},
    )
    with pytest.warns(DeprecationWarning) as caught:
        backend = build_backend(info)
    assert {str(w.message).split(": ")[-1] for w in caught} == {
        "rename it 'reclaim_after_s'",
        "rename it 'spot_unavailable'",
    }
    assert isinstance(backend, LocalBackend) and backend.state_dir == tmp_path / "s"
    assert backend.market == ScheduledMarket(reclaims=(5.0,), unavailable=((0.0, 1.0),))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "says"),
    [
        (LocalSettings, {"reclaim_after_s": [0]}, "reclaim_after_s.0: Input should be greater"),
        (LocalSettings, {"spot_unavailable": [[5, 1]]}, "spot_unavailable: Value error, window"),
        (LocalSettings, {"grace_s": -1}, "grace_s: Input should be greater than or equal to 0"),
        (LocalSettings, {"reclaim_after_s": [1], "trace_path": "t.json"}, "trace_path: .*one"),
        (LocalSettings, {"reclams": [1]}, "reclams: Extra inputs.*settings are checkpoint_root"),
        (LocalSettings, {"checkpoint_root": "/no/scheme"}, "checkpoint_root: Value error"),
        (AwsSettings, {"spot_queue": "s"}, "on_demand_queue: Field required"),
        (AwsSettings, {"spot_queue": "s", "on_demand_queue": "o", "batch_retries": 10}, "batch_"),
        (
            AwsSettings,
            {"spot_queue": "s", "on_demand_queue": "o", "aws_access_key_id": "AKIA"},
            "aws_secret_access_key: .*set together",
        ),
        (GcpSettings, {"project": "p"}, "region: Field required"),
        (GcpSettings, {"region": "r", "service_account_info": "{" + SECRET}, "key file's JSON"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(model, data, says):
    with pytest.raises(ConfigError) as info:
        model.load(data, what="connection 'c1' extras")
    text = str(info.value)
    assert text.startswith("invalid connection 'c1' extras: ")
    assert "\n" not in text and SECRET not in text, text
    assert re.search(says, text), text


def test_airflow_connection_errors_name_the_connection():
    with pytest.raises(ConfigError, match="^invalid connection 'l1' extras: grace_s: "):
        build_backend(ConnectionInfo("l1", "spot-local", {"grace_s": "soon"}))
    with pytest.raises(ConfigError, match="connection 'a1' extras: events_queue_url is not set"):
        build_notice_source(
            ConnectionInfo("a1", "aws", {"spot_queue": "s", "on_demand_queue": "o"}), since=None
        )


# -- the Airflow view ----------------------------------------------------------------------------


def test_both_local_connection_types_are_the_local_backend():
    assert ConnectionInfo("a", "spot-local").kind == ConnectionInfo("b", "spot_local").kind == LOCAL
    assert LOCAL == "spot-local" and all(c.kind == LOCAL for c in BUILTIN_CONNECTIONS.values())
    from spot_workflows.airflow import get_provider_info

    [conn_type] = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == "spot-local"  # no '_': no RFC 3986 warning per fetch


def test_airflow_credentials_and_google_provider_extras_map_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aws = settings(
            ConnectionInfo(
                "a",
                "aws",
                {"spot_queue": "s", "on_demand_queue": "o"},
                login="AKIA",
                password=SECRET,
            )
        )
        gcp = settings(
            ConnectionInfo(
                "g",
                "google_cloud_platform",
                {
                    "extra__google_cloud_platform__project": "p",
                    "extra__google_cloud_platform__key_path": "/k.json",
                    "region": "us-central1",
                    "scope": "https://www.googleapis.com/auth/cloud-platform",  # ignored
                },
            )
        )
    assert aws.aws_access_key_id == "AKIA"
    assert aws.aws_secret_access_key.get_secret_value() == SECRET
    assert SECRET not in repr(aws) + str(aws) + aws.model_dump_json()
    assert (gcp.project, gcp.region, gcp.service_account_file) == ("p", "us-central1", "/k.json")


# -- builders ------------------------------------------------------------------------------------


def test_each_market_setting_builds_its_market(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": [1, 0, 1]}))
    assert isinstance(LocalSettings().make_market(), NeverReclaimed)
    assert LocalSettings(poisson_rate_per_hour=2, market_seed=7).make_market() == PoissonMarket(
        rate_per_hour=2, seed=7
    )
    traced = LocalSettings(trace_path=str(trace), trace_tick_s=1).make_market()
    assert isinstance(traced, TraceMarket) and traced.tick_seconds == 1
    scheduled = LocalSettings(reclaim_after_s=[2], reclaim_after_checkpoint=True).make_market()
    assert scheduled == ScheduledMarket(reclaims=(2.0,), after_checkpoint=True)


def test_local_notice_source_reads_the_clouds_events_file(tmp_path):
    local = LocalSettings(state_dir=str(tmp_path / "cloud"))
    now = time.time()
    append_event(local.events_path(), {"event": "notice", "at": now, "job_id": "j1"})
    [notice] = local.notice_source(since=now - 1).poll()
    assert (notice.kind.value, notice.job_id) == ("INTERRUPTION", "j1")


def test_aws_sessions_from_keys_profile_or_the_default_chain(tmp_path, monkeypatch):
    base = {"spot_queue": "s", "on_demand_queue": "o", "region_name": "eu-west-1"}
    assert AwsSettings(**base).boto3_session() is None  # boto3's default chain, at client time
    keyed = AwsSettings(**base, aws_access_key_id="AKIA", aws_secret_access_key=SECRET)
    creds = keyed.boto3_session().get_credentials()
    assert (creds.access_key, creds.secret_key) == ("AKIA", SECRET)
    config = tmp_path / "config"
    config.write_text(
        "[profile dev]\nregion = ap-south-1\naws_access_key_id = AKIADEV\n"
        "aws_secret_access_key = devsecret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):  # boto3 ranks these first
        monkeypatch.delenv(name, raising=False)
    session = AwsSettings(spot_queue="s", on_demand_queue="o", profile_name="dev").boto3_session()
    assert (session.region_name, session.get_credentials().access_key) == ("ap-south-1", "AKIADEV")
    backend = keyed.build_backend()
    assert backend.region == "eu-west-1"
    assert backend.batch._request_signer._credentials.access_key == "AKIA"
    options = keyed.storage_options()
    assert (options["key"], options["secret"]) == ("AKIA", SECRET)


def test_gcp_project_comes_from_the_settings_or_the_key():
    with pytest.raises(ConfigError, match="project is not set"):
        GcpSettings(region="us-central1", emulator_host="127.0.0.1:1").build_backend()
    backend = GcpSettings(
        project="p1", region="us-central1", emulator_host="127.0.0.1:1", zones=["us-central1-a"]
    ).build_backend()
    assert (backend.parent, backend.zones) == (
        "projects/p1/locations/us-central1",
        ("us-central1-a",),
    )
    with pytest.raises(ConfigError, match="service_account_file is not a usable service account"):
        GcpSettings(region="us-central1", service_account_file="/nope.json").credentials()


def test_the_settings_doc_lists_every_setting_and_deprecated_name():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "backend-settings.md").read_text()
    for model in (LocalSettings, AwsSettings, GcpSettings):
        for name in [*model.model_fields, *model.RENAMED]:
            assert f"`{name}`" in doc, f"docs/backend-settings.md does not mention {name}"
