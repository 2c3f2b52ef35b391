"""Backend blocks for AWS Batch and GCP Batch: views of
:class:`~spot_workflows.backends.settings.AwsSettings` and
:class:`~spot_workflows.backends.settings.GcpSettings` (the Airflow connections' settings too).

Credentials: when ``prefect-aws`` / ``prefect-gcp`` is installed, the block takes their
``AwsCredentials`` / ``GcpCredentials`` block; else (or when that field is empty) it uses its own
optional fields, and with none of those set the SDK's default chain (boto3's environment, profile
and instance role chain; Google Application Default Credentials). Secret fields are ``SecretStr``.
The cloud SDKs are imported only when a backend is opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field

from spot_workflows.backends.base import Backend
from spot_workflows.backends.notice_sources import NoticeSource
from spot_workflows.backends.settings import AwsSettings, GcpSettings
from spot_workflows.prefect.blocks import DOCS_URL, SpotBackendBlock, settings_fields

try:  # reuse prefect-aws credentials where installed
    from prefect_aws import AwsCredentials as _AwsCredentials
except ImportError:  # pragma: no cover - depends on the environment
    _AwsCredentials = None
try:  # reuse prefect-gcp credentials where installed
    from prefect_gcp import GcpCredentials as _GcpCredentials
except ImportError:  # pragma: no cover - depends on the environment
    _GcpCredentials = None


class AwsBatchBackendBlock(SpotBackendBlock, settings_fields(AwsSettings)):  # type: ignore[misc]
    """Run spot steps on AWS Batch: a spot job queue and an on-demand job queue, or
    ``placements``: several job queues per capacity, possibly in several regions.

    Checkpoints and the attempt ledger live under ``checkpoint_root`` (an ``s3://`` prefix the
    jobs can write). Credentials come from a prefect-aws ``AwsCredentials`` block when given,
    else from the key fields or profile here (optionally assuming ``role_arn``), else from
    boto3's default chain.

    Example:
        ```python
        from spot_workflows.prefect import AwsBatchBackendBlock

        backend = AwsBatchBackendBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Spot Workflows AWS Batch Backend"
    _documentation_url = DOCS_URL
    settings_model = AwsSettings

    if _AwsCredentials is not None:  # pragma: no branch
        aws_credentials: _AwsCredentials | None = Field(  # type: ignore[valid-type]
            default=None, description="A prefect-aws AwsCredentials block to use."
        )

    def settings(self) -> AwsSettings:
        return super().settings()  # type: ignore[return-value]

    def _credentials_session(self) -> Any:
        creds = getattr(self, "aws_credentials", None)
        return creds.get_boto3_session() if creds is not None else None

    def boto3_session(self) -> Any:
        """The boto3 session the backend uses (see the class docs for the order)."""
        session = self._credentials_session() or self.settings().boto3_session()
        if session is None:  # boto3's default chain
            import boto3

            session = boto3.Session(region_name=self.region_name)
        return session

    def storage_options(self) -> dict[str, Any]:
        """s3fs options matching the backend's credentials, region and endpoint."""
        return self.settings().storage_options(session=self._credentials_session())

    def notice_source(self, *, since: float | None) -> NoticeSource:
        return self.settings().notice_source(since=since, session=self._credentials_session())

    @contextmanager
    def open_backend(self, *, step_key: str) -> Iterator[Backend]:
        yield self.settings().build_backend(session=self._credentials_session())


class GcpBatchBackendBlock(SpotBackendBlock, settings_fields(GcpSettings)):  # type: ignore[misc]
    """Run spot steps on GCP Batch: SPOT provisioning, escalating to STANDARD, in one region or
    in several (``placements``: regions with their zones, per capacity).

    Checkpoints and the attempt ledger live under ``checkpoint_root`` (a ``gs://`` prefix the
    jobs can write). Credentials come from a prefect-gcp ``GcpCredentials`` block when given,
    else from the service account fields here, else from Application Default Credentials.

    Example:
        ```python
        from spot_workflows.prefect import GcpBatchBackendBlock

        backend = GcpBatchBackendBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Spot Workflows GCP Batch Backend"
    _documentation_url = DOCS_URL
    settings_model = GcpSettings

    if _GcpCredentials is not None:  # pragma: no branch
        gcp_credentials: _GcpCredentials | None = Field(  # type: ignore[valid-type]
            default=None, description="A prefect-gcp GcpCredentials block to use."
        )

    def settings(self) -> GcpSettings:
        return super().settings()  # type: ignore[return-value]

    def credentials(self) -> tuple[Any, str | None]:
        """``(google credentials or None for ADC, project or None)``."""
        creds = getattr(self, "gcp_credentials", None)
        if creds is not None:
            return creds.get_credentials_from_service_account(), creds.project
        return self.settings().credentials()

    def storage_options(self) -> dict[str, Any]:
        """gcsfs options matching the backend's credentials and project."""
        creds, project = self.credentials()
        return self.settings().storage_options(credentials=creds, project=project)

    def _backend(self) -> Any:
        creds, project = self.credentials()
        return self.settings().build_backend(credentials=creds, credentials_project=project)

    def notice_source(self, *, since: float | None) -> NoticeSource:
        return self.settings().notice_source(since=since, backend=self._backend())

    @contextmanager
    def open_backend(self, *, step_key: str) -> Iterator[Backend]:
        yield self._backend()
