"""Backend blocks for AWS Batch and GCP Batch.

Credentials: when ``prefect-aws`` / ``prefect-gcp`` is installed, the block takes their
``AwsCredentials`` / ``GcpCredentials`` block; else (or when that field is empty) it uses its own
optional fields, and with none of those set the SDK's default chain (boto3's environment, profile
and instance role chain; Google Application Default Credentials). Secret fields are ``SecretStr``.
The cloud SDKs are imported only when a backend is opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from spot_workflows.backends.base import Backend
from spot_workflows.errors import ConfigError
from spot_workflows.prefect.blocks import DOCS_URL, SpotBackendBlock

try:  # reuse prefect-aws credentials where installed
    from prefect_aws import AwsCredentials as _AwsCredentials
except ImportError:  # pragma: no cover - depends on the environment
    _AwsCredentials = None
try:  # reuse prefect-gcp credentials where installed
    from prefect_gcp import GcpCredentials as _GcpCredentials
except ImportError:  # pragma: no cover - depends on the environment
    _GcpCredentials = None


class AwsBatchBackendBlock(SpotBackendBlock):
    """Run spot steps on AWS Batch: a spot job queue and an on-demand job queue.

    Checkpoints and the attempt ledger live under ``checkpoint_root`` (an ``s3://`` prefix the
    jobs can write). Credentials come from a prefect-aws ``AwsCredentials`` block when given,
    else from the key fields or profile here, else from boto3's default chain.

    Example:
        ```python
        from spot_workflows.prefect import AwsBatchBackendBlock

        backend = AwsBatchBackendBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Spot Workflows AWS Batch Backend"
    _documentation_url = DOCS_URL

    spot_queue: str = Field(description="Name or ARN of the job queue on spot capacity.")
    on_demand_queue: str = Field(description="Name or ARN of the job queue on on-demand capacity.")
    region_name: str | None = Field(
        default=None, description="AWS region; defaults to the credentials' region."
    )
    if _AwsCredentials is not None:  # pragma: no branch
        aws_credentials: _AwsCredentials | None = Field(  # type: ignore[valid-type]
            default=None, description="A prefect-aws AwsCredentials block to use."
        )
    profile_name: str | None = Field(
        default=None, description="Named profile of the AWS config files to use."
    )
    aws_access_key_id: str | None = Field(default=None, description="Access key id to use.")
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key that goes with the access key id."
    )
    aws_session_token: SecretStr | None = Field(
        default=None, description="Session token of temporary credentials."
    )
    endpoint_url: str | None = Field(
        default=None, description="Custom AWS API endpoint (VPC endpoint or a local stand-in)."
    )
    definition_prefix: str = Field(
        default="spot-workflows", description="Prefix of the job definitions registered."
    )
    batch_retries: int = Field(
        default=0,
        ge=0,
        le=9,
        description="Batch-level in-place retries of reclaimed jobs (0 leaves it to the planner).",
    )
    job_role_arn: str | None = Field(
        default=None, description="IAM role the job's container assumes (e.g. to reach S3)."
    )
    wrap: bool = Field(
        default=False,
        description="Wrap the command in spot-run (when the image has spot-workflows installed).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags added to every submitted job."
    )

    @model_validator(mode="after")
    def _key_pair(self) -> AwsBatchBackendBlock:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key must be set together")
        return self

    def boto3_session(self) -> Any:
        """The boto3 session the backend uses (see the class docs for the order)."""
        creds = getattr(self, "aws_credentials", None)
        if creds is not None:
            return creds.get_boto3_session()
        import boto3

        secret = self.aws_secret_access_key
        token = self.aws_session_token
        return boto3.Session(
            region_name=self.region_name,
            profile_name=self.profile_name,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            aws_session_token=token.get_secret_value() if token else None,
        )

    def storage_options(self) -> dict[str, Any]:
        """s3fs options matching the backend's credentials, region and endpoint."""
        opts: dict[str, Any] = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region_name:
            opts["client_kwargs"] = {"region_name": self.region_name}
        if getattr(self, "aws_credentials", None) is not None or self.aws_access_key_id:
            frozen = self.boto3_session().get_credentials().get_frozen_credentials()
            opts.update(key=frozen.access_key, secret=frozen.secret_key, token=frozen.token)
        elif self.profile_name:
            opts["profile"] = self.profile_name
        return opts

    @contextmanager
    def open_backend(self, *, step_key: str) -> Iterator[Backend]:
        from spot_workflows.backends.aws_batch import AwsBatchBackend

        yield AwsBatchBackend(
            spot_queue=self.spot_queue,
            on_demand_queue=self.on_demand_queue,
            region=self.region_name,
            session=self.boto3_session(),
            endpoint_url=self.endpoint_url,
            definition_prefix=self.definition_prefix,
            batch_retries=self.batch_retries,
            job_role_arn=self.job_role_arn,
            wrap=self.wrap,
            tags=self.tags,
        )


class GcpBatchBackendBlock(SpotBackendBlock):
    """Run spot steps on GCP Batch: SPOT provisioning, escalating to STANDARD.

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

    project: str | None = Field(
        default=None, description="GCP project id; defaults to the credentials' project."
    )
    region: str = Field(description="GCP region of the Batch jobs, e.g. us-central1.")
    if _GcpCredentials is not None:  # pragma: no branch
        gcp_credentials: _GcpCredentials | None = Field(  # type: ignore[valid-type]
            default=None, description="A prefect-gcp GcpCredentials block to use."
        )
    service_account_info: SecretStr | None = Field(
        default=None, description="Service account key JSON to authenticate with."
    )
    service_account_file: str | None = Field(
        default=None, description="Path of a service account key file to authenticate with."
    )
    machine_type: str | None = Field(
        default=None, description="Machine type, e.g. g2-standard-8; else Batch picks one."
    )
    accelerator_type: str | None = Field(
        default=None, description="GPU type, e.g. nvidia-l4; count defaults to the step's gpus."
    )
    zones: list[str] = Field(
        default_factory=list, description="Zones of the region the jobs may run in."
    )
    service_account: str | None = Field(
        default=None, description="Service account email the jobs' VMs run as."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every submitted job."
    )

    @field_validator("service_account_info")
    @classmethod
    def _json(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                json.loads(value.get_secret_value())
            except ValueError:
                raise ValueError("service_account_info must be the key file's JSON") from None
        return value

    def credentials(self) -> tuple[Any, str | None]:
        """``(google credentials or None for ADC, project or None)``."""
        creds = getattr(self, "gcp_credentials", None)
        if creds is not None:
            return creds.get_credentials_from_service_account(), creds.project
        if self.service_account_info is not None:
            from google.oauth2 import service_account

            info = json.loads(self.service_account_info.get_secret_value())
            return service_account.Credentials.from_service_account_info(info), info.get(
                "project_id"
            )
        if self.service_account_file is not None:
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_file(self.service_account_file)
            return creds, getattr(creds, "project_id", None)
        return None, None

    def storage_options(self) -> dict[str, Any]:
        """gcsfs options matching the backend's credentials and project."""
        creds, creds_project = self.credentials()
        opts: dict[str, Any] = {}
        if creds is not None:
            opts["token"] = creds
        if self.project or creds_project:
            opts["project"] = self.project or creds_project
        return opts

    @contextmanager
    def open_backend(self, *, step_key: str) -> Iterator[Backend]:
        from google.cloud import batch_v1

        from spot_workflows.backends.gcp_batch import GcpBatchBackend

        creds, creds_project = self.credentials()
        project = self.project or creds_project
        if not project:
            raise ConfigError(
                "GcpBatchBackendBlock.project is not set and the credentials carry no project"
            )
        client = batch_v1.BatchServiceClient(credentials=creds) if creds is not None else None
        yield GcpBatchBackend(
            project=project,
            region=self.region,
            client=client,
            machine_type=self.machine_type,
            accelerator_type=self.accelerator_type,
            zones=self.zones,
            service_account=self.service_account,
            labels=self.labels,
        )
