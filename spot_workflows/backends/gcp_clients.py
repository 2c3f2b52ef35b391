"""Google credentials and GCP Batch clients, as :class:`~spot_workflows.backends.settings.GcpSettings`
chooses them (the Google SDK stays in the ``gcp_*`` modules)."""

from __future__ import annotations

from typing import Any

from google.cloud import batch_v1
from google.oauth2 import service_account

from spot_workflows.backends.gcp_errors import translate


def key_credentials(*, info: dict[str, Any] | None = None, path: str | None = None) -> Any:
    """Service account credentials from a key's JSON (``info``) or its file (``path``)."""
    if info is not None:
        return service_account.Credentials.from_service_account_info(info)
    return service_account.Credentials.from_service_account_file(path)


def batch_client(*, credentials: Any, api_endpoint: str | None, where: str) -> Any:
    """A ``BatchServiceClient`` (``credentials`` None: Application Default Credentials); SDK
    errors while making it (no credentials found, ...) are translated."""
    options = {"api_endpoint": api_endpoint} if api_endpoint else None
    try:
        return batch_v1.BatchServiceClient(credentials=credentials, client_options=options)
    except Exception as exc:  # DefaultCredentialsError and friends
        raise translate(exc, what=f"create a GCP Batch client for {where}") from exc


def emulator_client(host: str) -> Any:
    """A client on a plaintext gRPC channel to ``host``: no credentials are looked up or sent."""
    import grpc
    from google.cloud.batch_v1.services.batch_service.transports import (
        BatchServiceGrpcTransport,
    )

    # A transport given a channel ignores credentials (the channel carries none): anonymous.
    transport = BatchServiceGrpcTransport(channel=grpc.insecure_channel(host))
    return batch_v1.BatchServiceClient(transport=transport)
