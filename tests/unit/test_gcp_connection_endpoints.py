"""GCP connection extras that choose the Batch API endpoint (``spot_workflows.airflow.cloud``;
no Airflow import): ``api_endpoint`` goes to ``client_options``, ``emulator_host`` builds a
plaintext channel and looks up no credentials."""

from __future__ import annotations

from types import SimpleNamespace

import google.auth
import pytest
from google.auth.credentials import AnonymousCredentials

from spot_workflows.airflow.cloud import GcpSettings, _gcp_client, gcp_backend
from spot_workflows.errors import ConfigError


def settings(**extra: object) -> GcpSettings:
    return GcpSettings(project="spot-proj", location="us-central1", **extra)


def test_no_endpoint_extra_keeps_the_default_client():
    assert _gcp_client(settings()) is None  # the backend builds one from ADC


def test_api_endpoint_goes_to_client_options(monkeypatch):
    monkeypatch.setattr(google.auth, "default", lambda **_: (AnonymousCredentials(), "spot-proj"))
    client = _gcp_client(settings(api_endpoint="batch-psc1.p.googleapis.com"))
    assert client.api_endpoint == "batch-psc1.p.googleapis.com"
    assert client.transport._host == "batch-psc1.p.googleapis.com:443"


def test_emulator_host_uses_no_credentials(monkeypatch):
    def no_adc(**_):  # pragma: no cover - the point is that it is never called
        raise AssertionError("emulator_host must not look up credentials")

    monkeypatch.setattr(google.auth, "default", no_adc)
    backend = gcp_backend(
        SimpleNamespace(
            conn_id="gcp_emu",
            extra={"project": "spot-proj", "location": "us-central1", "emulator_host": "h:1"},
        )
    )
    assert backend.parent == "projects/spot-proj/locations/us-central1"
    assert backend.client.transport._ignore_credentials


def test_api_endpoint_and_emulator_host_are_exclusive():
    info = SimpleNamespace(
        conn_id="gcp_both",
        extra={
            "project": "spot-proj",
            "location": "us-central1",
            "api_endpoint": "batch.googleapis.com",
            "emulator_host": "127.0.0.1:8085",
        },
    )
    with pytest.raises(ConfigError, match="'gcp_both'.*keep one"):
        gcp_backend(info)
