"""GCP settings that choose the Batch API endpoint (``spot_workflows.backends.settings``; no
Airflow import): ``api_endpoint`` goes to ``client_options``, ``emulator_host`` builds a
plaintext channel and looks up no credentials. Airflow connections are read into the same model."""

from __future__ import annotations

import google.auth
import pytest
from google.auth.credentials import AnonymousCredentials

from spot_workflows.airflow.connections import ConnectionInfo, build_backend
from spot_workflows.backends.settings import GcpSettings
from spot_workflows.errors import ConfigError, CredentialsError


def settings(**extra: object) -> GcpSettings:
    return GcpSettings(project="spot-proj", region="us-central1", **extra)


def test_no_endpoint_setting_keeps_the_default_client():
    assert settings().client() is None  # the backend builds one from ADC


def test_api_endpoint_goes_to_client_options(monkeypatch):
    monkeypatch.setattr(google.auth, "default", lambda **_: (AnonymousCredentials(), "spot-proj"))
    client = settings(api_endpoint="batch-psc1.p.googleapis.com").client()
    assert client.api_endpoint == "batch-psc1.p.googleapis.com"
    assert client.transport._host == "batch-psc1.p.googleapis.com:443"


def test_emulator_host_uses_no_credentials(monkeypatch):
    def no_adc(**_):  # pragma: no cover - the point is that it is never called
        raise AssertionError("emulator_host must not look up credentials")

    monkeypatch.setattr(google.auth, "default", no_adc)
    extra = {"project": "spot-proj", "region": "us-central1", "emulator_host": "h:1"}
    backend = build_backend(ConnectionInfo("gcp_emu", "google_cloud_platform", extra))
    assert backend.parent == "projects/spot-proj/locations/us-central1"
    assert backend.client.transport._ignore_credentials


def test_api_endpoint_and_emulator_host_are_exclusive():
    extra = {
        "project": "spot-proj",
        "region": "us-central1",
        "api_endpoint": "batch.googleapis.com",
        "emulator_host": "127.0.0.1:8085",
    }
    with pytest.raises(ConfigError, match="'gcp_both' extras: emulator_host: .*keep one"):
        build_backend(ConnectionInfo("gcp_both", "google_cloud_platform", extra))


def test_missing_credentials_at_an_endpoint_are_translated(monkeypatch):
    def no_adc(**_):
        raise google.auth.exceptions.DefaultCredentialsError("no ADC here")

    monkeypatch.setattr(google.auth, "default", no_adc)
    with pytest.raises(CredentialsError, match="no Google Cloud credentials found"):
        settings(api_endpoint="batch.googleapis.com").client()
