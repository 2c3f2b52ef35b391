"""AWS Batch and GCP Batch from Airflow connections (imported only when such a connection is used).

AWS (``aws`` connection, the ``aws_default`` conventions): login/password are an access key pair,
extras ``aws_session_token``, ``profile_name``, ``region_name``, ``endpoint_url``; with none of
them boto3's default credential chain applies. spot-workflows' own extras: ``spot_queue`` and
``on_demand_queue`` (required; what ``spot-workflows aws bootstrap`` printed), ``events_queue_url``
(the bootstrap's SQS queue, for the termination sensor), ``job_role_arn``, ``definition_prefix``,
``checkpoint_root`` (``s3://...``). Other extras of the Amazon provider are ignored.

GCP (``google_cloud_platform`` connection, the ``google_cloud_default`` conventions): extras
``project`` and ``location`` (a region such as ``us-central1``); ``key_path`` or ``keyfile_dict``
for a service account key, else Application Default Credentials. Optional: ``machine_type``,
``accelerator_type``, ``service_account``, ``checkpoint_root`` (``gs://...``). Endpoints:
``api_endpoint`` (``host[:port]``, e.g. a regional endpoint or a Private Service Connect one such
as ``batch-myendpoint.p.googleapis.com``; TLS and the usual credentials) and ``emulator_host``
(``host:port`` of a local stand-in of the Batch API, the ``*_EMULATOR_HOST`` convention:
plaintext gRPC, no credentials sent; for tests and development only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spot_workflows.backends.base import Backend
from spot_workflows.core.outcomes import Attempt, TerminationNotice
from spot_workflows.errors import ConfigError


def _settings(model: type[BaseModel], info: Any, what: str) -> Any:
    extra = {k.removeprefix("extra__google_cloud_platform__"): v for k, v in info.extra.items()}
    try:
        return model.model_validate(extra)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"connection {info.conn_id!r} ({what}) extra {name!r}: {err['msg']}"
        ) from None


# -- AWS ------------------------------------------------------------------------------------------


class AwsSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    spot_queue: str
    on_demand_queue: str
    region_name: str | None = None
    endpoint_url: str | None = None
    aws_session_token: str | None = Field(default=None, repr=False)  # a credential: never shown
    profile_name: str | None = None
    events_queue_url: str | None = None
    job_role_arn: str | None = None
    definition_prefix: str = "spot-workflows"


def _aws_session(info: Any, settings: AwsSettings) -> Any:
    if not (info.login or settings.profile_name):
        return None  # boto3's default chain (env, config files, instance role)
    import boto3

    return boto3.session.Session(
        aws_access_key_id=info.login or None,
        aws_secret_access_key=info.password or None,
        aws_session_token=settings.aws_session_token,
        profile_name=settings.profile_name,
        region_name=settings.region_name,
    )


def aws_backend(info: Any) -> Backend:
    from spot_workflows.backends.aws_batch import AwsBatchBackend

    settings = _settings(AwsSettings, info, "AWS Batch")
    return AwsBatchBackend(
        spot_queue=settings.spot_queue,
        on_demand_queue=settings.on_demand_queue,
        region=settings.region_name,
        session=_aws_session(info, settings),
        endpoint_url=settings.endpoint_url,
        job_role_arn=settings.job_role_arn,
        definition_prefix=settings.definition_prefix,
    )


class AwsNoticeSource:
    """The bootstrap's EventBridge -> SQS queue, as termination notices (consumes messages)."""

    def __init__(self, consumer: Any, *, since: float | None) -> None:
        self.consumer = consumer
        self.since = since

    def track_attempts(self, step_key: str, attempts: Iterable[Attempt]) -> None:
        self.consumer.index.track_attempts(step_key, attempts)

    def poll(self) -> list[TerminationNotice]:
        out = []
        for event in self.consumer.poll(max_messages=10, wait_s=0):
            notice = event if isinstance(event, TerminationNotice) else event.notice
            if notice is None:
                continue
            seen = notice.seen_at.timestamp() if notice.seen_at else None
            if self.since is None or seen is None or seen >= self.since:
                out.append(notice)
        return out


def aws_notice_source(info: Any, *, since: float | None) -> AwsNoticeSource:
    from spot_workflows.backends.aws_events import EventConsumer

    settings = _settings(AwsSettings, info, "AWS Batch")
    if not settings.events_queue_url:
        raise ConfigError(
            f"connection {info.conn_id!r} has no 'events_queue_url' extra: set it to the SQS "
            "queue `spot-workflows aws bootstrap` created to receive termination events"
        )
    consumer = EventConsumer(
        queue_url=settings.events_queue_url,
        session=_aws_session(info, settings),
        region=settings.region_name,
        endpoint_url=settings.endpoint_url,
    )
    return AwsNoticeSource(consumer, since=since)


# -- GCP ------------------------------------------------------------------------------------------


class GcpSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    project: str
    location: str
    key_path: str | None = None
    keyfile_dict: dict | str | None = Field(default=None, repr=False)  # holds a private key
    machine_type: str | None = None
    accelerator_type: str | None = None
    service_account: str | None = None
    api_endpoint: str | None = None
    emulator_host: str | None = None


def _gcp_emulator_client(host: str) -> Any:
    """A client on a plaintext gRPC channel to ``host``: no credentials are looked up or sent."""
    import grpc
    from google.cloud import batch_v1
    from google.cloud.batch_v1.services.batch_service.transports import (
        BatchServiceGrpcTransport,
    )

    # A transport given a channel ignores credentials (the channel carries none): anonymous.
    transport = BatchServiceGrpcTransport(channel=grpc.insecure_channel(host))
    return batch_v1.BatchServiceClient(transport=transport)


def _gcp_client(settings: GcpSettings) -> Any:
    if settings.emulator_host:
        return _gcp_emulator_client(settings.emulator_host)
    if not (settings.key_path or settings.keyfile_dict or settings.api_endpoint):
        return None  # Application Default Credentials, default endpoint
    from google.cloud import batch_v1

    creds = None  # Application Default Credentials
    if settings.key_path or settings.keyfile_dict:
        from google.oauth2 import service_account

        if settings.key_path:
            creds = service_account.Credentials.from_service_account_file(settings.key_path)
        else:
            info = settings.keyfile_dict
            creds = service_account.Credentials.from_service_account_info(
                json.loads(info) if isinstance(info, str) else info
            )
    options = {"api_endpoint": settings.api_endpoint} if settings.api_endpoint else None
    try:
        return batch_v1.BatchServiceClient(credentials=creds, client_options=options)
    except Exception as exc:  # DefaultCredentialsError and friends
        from spot_workflows.backends.gcp_errors import translate

        where = f"projects/{settings.project}/locations/{settings.location}"
        raise translate(exc, what=f"create a GCP Batch client for {where}") from exc


def gcp_backend(info: Any) -> Backend:
    from spot_workflows.backends.gcp_batch import GcpBatchBackend

    settings = _settings(GcpSettings, info, "GCP Batch")
    if settings.api_endpoint and settings.emulator_host:
        raise ConfigError(
            f"connection {info.conn_id!r} (GCP Batch) sets both 'api_endpoint' (a real endpoint: "
            "TLS and credentials) and 'emulator_host' (a local stand-in: plaintext, no "
            "credentials); keep one"
        )
    return GcpBatchBackend(
        project=settings.project,
        region=settings.location,
        client=_gcp_client(settings),
        machine_type=settings.machine_type,
        accelerator_type=settings.accelerator_type,
        service_account=settings.service_account,
    )


class GcpNoticeSource:
    """Preemption events of the watched step's GCP Batch jobs (polled with GetJob)."""

    def __init__(self, watcher: Any, *, since: float | None) -> None:
        self.watcher = watcher
        self.since = since

    def track_attempts(self, step_key: str, attempts: Iterable[Attempt]) -> None:
        for a in attempts:
            if a.job_id and a.live:
                self.watcher.watch(a.job_id, step_key=step_key)

    def poll(self) -> list[TerminationNotice]:
        notices, _ = self.watcher.poll()
        return [
            n
            for n in notices
            if self.since is None or n.seen_at is None or n.seen_at.timestamp() >= self.since
        ]


def gcp_notice_source(info: Any, *, since: float | None) -> GcpNoticeSource:
    from spot_workflows.backends.gcp_events import GcpPreemptionWatcher

    return GcpNoticeSource(GcpPreemptionWatcher(backend=gcp_backend(info)), since=since)
