"""Settings of the GCP Batch backend, and the credentials, client, backend and notice source they
build.

Credentials, in order: a service account key (``service_account_info``, the key file's JSON, or
``service_account_file``, its path), else Application Default Credentials. The Batch API is
reached at its default endpoint, at ``api_endpoint`` (``host[:port]``: a regional or Private
Service Connect endpoint; TLS and the credentials as usual), or at ``emulator_host``
(``host:port`` of a local stand-in: plaintext gRPC and no credentials looked up or sent; for
tests and development only). The Google SDK is imported only by the builders, and its errors
while making a client are translated into :mod:`spot_workflows.errors`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Self

from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from spot_workflows.backends.settings.common import (
    BackendSettings,
    SettingError,
    need_both_capacities,
)
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

if TYPE_CHECKING:
    from spot_workflows.backends.gcp_batch import GcpBatchBackend
    from spot_workflows.backends.notice_sources import GcpNoticeSource


class GcpSettings(BackendSettings):
    """GCP Batch: SPOT provisioning, escalating to STANDARD.

    One region (``region``, optionally ``zones``) for both, or ``placements``: several regions
    (each with optional zones) per capacity. With placements, ``region`` is the region of every
    placement that names none (default: the first placement's region) and ``zones`` must be
    empty (give each placement its zones).
    """

    # an Airflow ``google_cloud_platform`` connection also carries the Google provider's extras
    model_config = ConfigDict(extra="ignore", frozen=True)
    KIND = "GCP Batch"
    BACKEND = "gcp-batch"
    RENAMED = {
        "location": "region",
        "key_path": "service_account_file",
        "keyfile_dict": "service_account_info",
    }

    project: str | None = Field(
        default=None, description="GCP project id; defaults to the credentials' project."
    )
    region: str | None = Field(
        default=None,
        description="GCP region of the Batch jobs, e.g. us-central1 (or set placements).",
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
    placements: list[Placement] | None = Field(
        default=None,
        description=(
            "Regions to run in instead of region/zones: a list of {name, capacity (SPOT or "
            "ON_DEMAND), region, zones, usd_per_hour}; at least one of each capacity."
        ),
    )
    service_account: str | None = Field(
        default=None, description="Service account email the jobs' VMs run as."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every submitted job."
    )
    api_endpoint: str | None = Field(
        default=None,
        description="Batch API endpoint host[:port] (regional or Private Service Connect).",
    )
    emulator_host: str | None = Field(
        default=None,
        description="host:port of a local stand-in of the Batch API (plaintext, no credentials).",
    )

    @field_validator("service_account_info", mode="before")
    @classmethod
    def _key_json(cls, value: Any) -> Any:
        if isinstance(value, dict):  # Airflow's keyfile_dict may hold the parsed key
            return json.dumps(value)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str):
            try:
                json.loads(text)
            except ValueError:
                raise ValueError("service_account_info must be the key file's JSON") from None
        return value

    @field_validator("emulator_host")
    @classmethod
    def _one_endpoint(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("api_endpoint"):
            raise ValueError(
                "set api_endpoint (a real endpoint: TLS and credentials) or emulator_host (a "
                "local stand-in: plaintext, no credentials), not both; keep one"
            )
        return value

    @model_validator(mode="after")
    def _region_or_placements(self) -> Self:
        if self.placements is None:
            if not self.region:
                raise SettingError(
                    "region", "Field required: set region (e.g. us-central1) or placements"
                )
            return self
        if self.zones:
            raise SettingError(
                "zones",
                "zones and placements are both set: give each placement its zones and remove zones",
            )
        if not self.region and any(not p.region for p in self.placements):
            name = next(p.name for p in self.placements if not p.region)
            raise SettingError(
                "placements",
                f"placement {name!r} names no region and region is not set: set its region "
                "(e.g. us-central1)",
            )
        need_both_capacities(tuple(self.placements), self.KIND)
        return self

    def home_region(self) -> str:
        """``region``, else the first placement's region."""
        if self.region:
            return self.region
        return next(p.region for p in self.placements or () if p.region) or ""

    # -- builders ---------------------------------------------------------------------------------
    def credentials(self) -> tuple[Any, str | None]:
        """``(google credentials or None for ADC, the key's project or None)``."""
        if self.service_account_info is None and self.service_account_file is None:
            return None, None
        from spot_workflows.backends.gcp_clients import key_credentials

        try:
            if self.service_account_info is not None:
                info = json.loads(self.service_account_info.get_secret_value())
                return key_credentials(info=info), info.get("project_id")
            creds = key_credentials(path=self.service_account_file)
        except (OSError, ValueError, KeyError) as exc:
            field = "service_account_info" if self.service_account_info else "service_account_file"
            raise ConfigError(
                f"{field} is not a usable service account key ({type(exc).__name__}); give the "
                "key file's JSON or path, as `gcloud iam service-accounts keys create` writes it"
            ) from None
        return creds, getattr(creds, "project_id", None)

    def client(self, *, credentials: Any = None) -> Any:
        """The ``BatchServiceClient`` these settings choose, or ``None`` for the backend's default
        (Application Default Credentials at the default endpoint). ``credentials`` (e.g. from a
        prefect-gcp block) replace the key fields here."""
        from spot_workflows.backends import gcp_clients

        if self.emulator_host:
            return gcp_clients.emulator_client(self.emulator_host)
        creds = credentials if credentials is not None else self.credentials()[0]
        if creds is None and not self.api_endpoint:
            return None
        where = f"projects/{self.project}/locations/{self.home_region()}"
        return gcp_clients.batch_client(
            credentials=creds, api_endpoint=self.api_endpoint, where=where
        )

    def build_backend(
        self, *, credentials: Any = None, credentials_project: str | None = None
    ) -> GcpBatchBackend:
        """The GCP Batch backend; ``credentials`` / ``credentials_project`` (e.g. from a
        prefect-gcp block) replace the key fields here."""
        from spot_workflows.backends.gcp_batch import GcpBatchBackend

        if credentials is None:
            credentials, credentials_project = self.credentials()
        project = self.project or credentials_project
        if not project:
            raise ConfigError(
                "project is not set and the credentials carry no project: set project to the "
                "GCP project id of the Batch jobs (e.g. my-proj)"
            )
        return GcpBatchBackend(
            project=project,
            region=self.home_region(),
            placements=self.placements,
            client=self.client(credentials=credentials),
            machine_type=self.machine_type,
            accelerator_type=self.accelerator_type,
            zones=self.zones,
            service_account=self.service_account,
            labels=self.labels,
        )

    def notice_source(self, *, since: float | None, backend: Any = None) -> GcpNoticeSource:
        """Preemption events of the watched step's jobs (``backend``: the one to poll them
        with; by default one built from these settings)."""
        from spot_workflows.backends.gcp_events import GcpPreemptionWatcher
        from spot_workflows.backends.notice_sources import GcpNoticeSource

        watcher = GcpPreemptionWatcher(backend=backend or self.build_backend())
        return GcpNoticeSource(watcher, since=since)

    def storage_options(self, *, credentials: Any = None, project: str | None = None) -> dict:
        """gcsfs options matching the backend's credentials and project."""
        if credentials is None:
            credentials, project = self.credentials()
        opts: dict[str, Any] = {}
        if credentials is not None:
            opts["token"] = credentials
        if self.project or project:
            opts["project"] = self.project or project
        return opts
