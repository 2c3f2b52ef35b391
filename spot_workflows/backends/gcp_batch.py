"""GCP Batch backend: one Batch job per attempt, SPOT or STANDARD provisioning.

Facts it relies on: ``ProvisioningModel`` STANDARD=1, SPOT=2; ``maxRetryCount`` 0..10
with one lifecycle policy; reserved exit codes 50000-50006 (50001 = spot preemption, 50005 = max
run duration exceeded); a preemption status event reads ``... due to Spot Preemption with exit code
50001.``. Jobs live under the regional parent ``projects/P/locations/R``.

Placements are regions (each with optional allowed zones): ``region``/``zones`` are one SPOT and
one STANDARD placement (``spot``, ``on-demand``), ``placements`` lists several per capacity. A job
id is the job's full resource name (``projects/P/locations/REGION/jobs/ID``), unique across
regions; ``find`` looks in every placement's region.

Job ids are derived from the ledger's job name (unique per attempt), so a re-run never collides
with an earlier attempt; a 409 ``AlreadyExists`` on create can only mean our own earlier submit of
*this* attempt went through (e.g. the reply was lost), and that job is adopted.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence

from google.api_core import exceptions as gexc
from google.cloud import batch_v1

from spot_workflows.backends.gcp_errors import call, translate
from spot_workflows.backends.gcp_jobs import batch_job
from spot_workflows.backends.gcp_placements import gcp_placements, pick
from spot_workflows.backends.gcp_status import (
    LABEL_MANAGED,
    LABEL_STEP,
    gcp_job_id,
    gcp_label_value,
    labels_step,
    observe_job,
)
from spot_workflows.config import StepSpec
from spot_workflows.core.cost import PriceCatalog
from spot_workflows.core.outcomes import Capacity, Observation
from spot_workflows.core.placements import Placement, by_name
from spot_workflows.errors import BackendError, ConfigError

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_REGION = re.compile(r"^[a-z]+(?:-[a-z]+)+\d+$")
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
LABEL_PLACEMENT = "spot-workflows-placement"


class GcpBatchBackend:
    """Backend over the GCP Batch API (``google-cloud-batch``; extra ``gcp``).

    ``client``: a ``batch_v1.BatchServiceClient`` (default: one built from Application Default
    Credentials). ``machine_type`` defaults to the step's single ``instance_types`` entry, else
    Batch picks one from vCPUs and memory. ``accelerator_type`` (e.g. ``nvidia-l4``) with
    ``accelerator_count`` (default: the step's ``gpus``). ``zones`` restrict placement within
    ``region``. ``in_place_retries`` > 0 lets Batch itself retry a task on exit code 50001 (one
    ``RETRY_TASK`` lifecycle policy; note Batch then also retries other failures up to that count).
    """

    name = "gcp-batch"
    stop_latency_s = 30.0  # DeleteJob: the VM gets the shutdown signal, then is torn down

    def __init__(
        self,
        *,
        project: str,
        region: str,
        client: batch_v1.BatchServiceClient | None = None,
        machine_type: str | None = None,
        accelerator_type: str | None = None,
        accelerator_count: int | None = None,
        zones: Sequence[str] = (),
        placements: Sequence[Placement | dict] | None = None,
        install_gpu_drivers: bool | None = None,
        in_place_retries: int = 0,
        service_account: str | None = None,
        labels: Mapping[str, str] | None = None,
        notification_topic: str | None = None,
        rpc_timeout_s: float = 30.0,
        tries: int = 4,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not project or "/" in project:
            raise ConfigError(f"project must be a GCP project id like 'my-proj', got {project!r}")
        if not _REGION.match(region or ""):
            raise ConfigError(f"region must be a GCP region like 'us-central1', got {region!r}")
        for zone in zones:
            if not zone.startswith(f"{region}-"):
                raise ConfigError(f"zone {zone!r} is not in region {region!r} (e.g. {region}-a)")
        self.placements = gcp_placements(placements, region=region, zones=tuple(zones))
        if not 0 <= in_place_retries <= 10:
            raise ConfigError(
                f"in_place_retries must be 0..10 (maxRetryCount), not {in_place_retries}"
            )
        if accelerator_count is not None and accelerator_count < 1:
            raise ConfigError(f"accelerator_count must be >= 1, got {accelerator_count}")
        if notification_topic and not _TOPIC.match(notification_topic):
            raise ConfigError("notification_topic must look like projects/PROJECT/topics/TOPIC")
        for key, value in (labels or {}).items():
            if not _LABEL_KEY.match(key) or gcp_label_value(value) != value:
                raise ConfigError(
                    f"label {key}={value!r} breaks GCP label rules: keys start with a lowercase "
                    "letter; keys and values use <= 63 of a-z, 0-9, '_' and '-'"
                )
        self.project, self.region = project, region
        self.machine_type, self.accelerator_type = machine_type, accelerator_type
        self.accelerator_count, self.zones = accelerator_count, tuple(zones)
        self.install_gpu_drivers, self.in_place_retries = install_gpu_drivers, in_place_retries
        self.service_account, self.labels = service_account, dict(labels or {})
        self.notification_topic = notification_topic
        self.rpc_timeout_s, self.tries = rpc_timeout_s, tries
        self.backoff_s, self.sleep = backoff_s, sleep
        if client is None:
            try:
                client = batch_v1.BatchServiceClient()
            except Exception as exc:  # DefaultCredentialsError and friends
                raise translate(exc, what=f"create a GCP Batch client for {self.parent}") from exc
        self.client = client
        self._reached = False

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def parent_of(self, placement: Placement) -> str:
        return f"projects/{self.project}/locations/{placement.region or self.region}"

    def regions(self) -> list[str]:
        """The placements' regions, the home region first."""
        return list(
            dict.fromkeys([self.region, *(p.region or self.region for p in self.placements)])
        )

    def placement(self, capacity: Capacity, name: str | None) -> Placement:
        """The placement to submit to: ``name``, else the first of ``capacity``."""
        return pick(self.placements, capacity, name)

    def job_path(self, job_id_or_name: str) -> str:
        if job_id_or_name.startswith("projects/"):
            return job_id_or_name
        return f"{self.parent}/jobs/{job_id_or_name}"

    def _call(self, fn: Callable, *, what: str, passthrough: tuple = ()):  # type: ignore[type-arg]
        return call(
            fn,
            what=what,
            tries=self.tries,
            backoff_s=self.backoff_s,
            sleep=self.sleep,
            passthrough=passthrough,
        )

    # -- building the job --------------------------------------------------------------------
    def build_job(
        self,
        spec: StepSpec,
        *,
        job_name: str,
        attempt: int,
        capacity: Capacity,
        zones: Sequence[str] | None = None,
    ) -> batch_v1.Job:
        """The ``batch_v1.Job`` for one attempt (pure: no API call; see :mod:`.gcp_jobs`);
        ``zones``: the allowed zones (default: the backend's ``zones``)."""
        zones = self.zones if zones is None else tuple(zones)
        return batch_job(
            spec,
            attempt=attempt,
            capacity=capacity,
            zones=zones,
            machine_type=self.machine_type,
            accelerator_type=self.accelerator_type,
            accelerator_count=self.accelerator_count,
            install_gpu_drivers=self.install_gpu_drivers,
            in_place_retries=self.in_place_retries,
            labels=self.labels,
            service_account=self.service_account,
            notification_topic=self.notification_topic,
        )

    # -- Backend protocol --------------------------------------------------------------------
    def submit(
        self,
        spec: StepSpec,
        *,
        job_name: str,
        attempt: int,
        capacity: Capacity,
        placement: str | None = None,
    ) -> str:
        chosen = self.placement(capacity, placement)
        parent = self.parent_of(chosen)
        job = self.build_job(
            spec, job_name=job_name, attempt=attempt, capacity=capacity, zones=chosen.zones
        )
        job.labels[LABEL_PLACEMENT] = gcp_label_value(chosen.name)
        job_id = gcp_job_id(job_name)
        request = batch_v1.CreateJobRequest(
            parent=parent,
            job_id=job_id,
            job=job,
            request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{parent}/jobs/{job_id}")),
        )
        try:
            created = self._call(
                lambda: self.client.create_job(
                    request=request, retry=None, timeout=self.rpc_timeout_s
                ),
                what=f"create job {job_id} in {parent}",
                passthrough=(gexc.AlreadyExists,),
            )
            return created.name
        except gexc.AlreadyExists:
            existing = self.get_job(f"{parent}/jobs/{job_id}")
            if existing is None:
                raise BackendError(
                    f"GCP Batch said job {job_id} exists in {parent} but cannot find it; "
                    "run the step again"
                ) from None
            if existing.labels.get(LABEL_STEP) != labels_step(spec.key):
                raise BackendError(
                    f"job {existing.name} already exists and belongs to another step "
                    f"({existing.labels.get(LABEL_STEP)!r}); give the step its own checkpoint URI"
                ) from None
            return existing.name  # our own earlier submit went through: adopt it

    def describe(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        out = {}
        for job_id in job_ids:
            job = self.get_job(job_id)
            if job is not None:
                out[job_id] = observe_job(job, job_id=job_id)
        return out

    def cancel(self, job_id: str, *, reason: str) -> None:
        """Delete the job (Batch stops its VMs); a job already gone is fine."""
        name = self.job_path(job_id)
        try:
            self._call(
                lambda: self.client.delete_job(
                    request=batch_v1.DeleteJobRequest(name=name, reason=reason[:1000]),
                    retry=None,
                    timeout=self.rpc_timeout_s,
                ),
                what=f"delete job {name}",
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            return

    def find(self, job_name: str) -> str | None:
        """The job of ``job_name`` in any placement's region (the home region first)."""
        job_id = gcp_job_id(job_name)
        for region in self.regions():
            job = self.get_job(f"projects/{self.project}/locations/{region}/jobs/{job_id}")
            if job is not None:
                return job.name
        return None

    def check_spec(self, spec: StepSpec) -> None:
        """Once: list jobs in each placement region other than the home one (whose first call
        reports its own errors); a region these credentials cannot reach is a one-line
        ConfigError naming the placement, raised before anything is recorded or submitted."""
        if self._reached:
            return
        for region in self.regions()[1:]:
            parent = f"projects/{self.project}/locations/{region}"
            try:
                self._call(
                    lambda parent=parent: self.client.list_jobs(
                        request=batch_v1.ListJobsRequest(parent=parent, page_size=1),
                        retry=None,
                        timeout=self.rpc_timeout_s,
                    ),
                    what=f"list jobs in {parent}",
                )
            except Exception as exc:  # translated SDK errors: credentials, API, network
                name = next(p.name for p in self.placements if (p.region or self.region) == region)
                raise ConfigError(
                    f"placements: placement {name!r} is in region {region}, which these GCP "
                    f"credentials cannot reach ({_one_line(exc)}); enable Batch there, fix the "
                    "region, or remove the placement"
                ) from None
        self._reached = True

    def price_per_hour(
        self, placement: str, *, machine_type: str | None, catalog: PriceCatalog | None = None
    ) -> float | None:
        """USD per hour on ``placement``: its ``usd_per_hour``, else ``catalog``'s price for
        ``machine_type`` in its region on its capacity (None when unknown)."""
        chosen = by_name(self.placements, placement)
        if chosen is None:
            raise ConfigError(
                f"placement {placement!r} is not one of {[p.name for p in self.placements]}"
            )
        if chosen.usd_per_hour is not None:
            return chosen.usd_per_hour
        machine_type = machine_type or self.machine_type
        if catalog is None or not machine_type:
            return None
        price = catalog.find("gcp", machine_type, chosen.region or self.region)
        return catalog.hourly(price, chosen.capacity) if price is not None else None

    # -- extras ------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> batch_v1.Job | None:
        name = self.job_path(job_id)
        try:
            return self._call(
                lambda: self.client.get_job(name=name, retry=None, timeout=self.rpc_timeout_s),
                what=f"get job {name}",
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            return None

    def list_jobs(self, *, step_key: str | None = None) -> Iterator[batch_v1.Job]:
        """Jobs under the regional parent made by spot-workflows (optionally for one step)."""
        pager = self._call(
            lambda: self.client.list_jobs(
                request=batch_v1.ListJobsRequest(parent=self.parent),
                retry=None,
                timeout=self.rpc_timeout_s,
            ),
            what=f"list jobs in {self.parent}",
        )
        try:
            for job in pager:
                if job.labels.get(LABEL_MANAGED) != "spot-workflows":
                    continue
                if step_key is None or job.labels.get(LABEL_STEP) == labels_step(step_key):
                    yield job
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            raise translate(exc, what=f"list jobs in {self.parent}") from exc


def _one_line(exc: BaseException) -> str:
    """An error's text on one line, cut short (for a message that quotes it)."""
    return " ".join(str(exc).split())[:200]
