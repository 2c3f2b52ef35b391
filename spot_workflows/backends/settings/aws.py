"""Settings of the AWS Batch backend, and the boto3 session, backend and notice source they build.

Credentials, in order: an access key pair (``aws_access_key_id`` / ``aws_secret_access_key``,
optional ``aws_session_token``), else a named ``profile_name``, else boto3's default chain
(environment, config files, instance or task role). With ``role_arn`` those credentials assume
that role (STS ``AssumeRole``, refreshed before they expire). boto3 is imported only by the
builders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from pydantic import ConfigDict, Field, SecretStr, model_validator

from spot_workflows.backends.aws_placements import ON_DEMAND_NAME, SPOT_NAME
from spot_workflows.backends.settings.common import (
    BackendSettings,
    SettingError,
    need_both_capacities,
)
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

if TYPE_CHECKING:
    from spot_workflows.backends.aws_batch import AwsBatchBackend
    from spot_workflows.backends.notice_sources import AwsNoticeSource


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class AwsSettings(BackendSettings):
    """AWS Batch: a spot job queue and an on-demand job queue (``spot-workflows aws bootstrap``
    creates both, and the events queue), or ``placements``: several job queues per capacity,
    possibly in several regions.

    Set either ``spot_queue`` and ``on_demand_queue`` (one placement each, named ``spot`` and
    ``on-demand``) or ``placements``, not both. ``region_name`` is the region of every
    placement that names none (and of the events queue).
    """

    # an Airflow ``aws`` connection also carries the Amazon provider's own extras: ignore them
    model_config = ConfigDict(extra="ignore", frozen=True)
    KIND = "AWS Batch"
    BACKEND = "aws-batch"

    spot_queue: str | None = Field(
        default=None,
        description="Name or ARN of the job queue on spot capacity (or set placements).",
    )
    on_demand_queue: str | None = Field(
        default=None,
        description="Name or ARN of the job queue on on-demand capacity (or set placements).",
    )
    placements: list[Placement] | None = Field(
        default=None,
        description=(
            "Job queues to run on instead of spot_queue/on_demand_queue: a list of "
            "{name, capacity (SPOT or ON_DEMAND), queue, region, usd_per_hour}; at least one "
            "of each capacity; region defaults to region_name."
        ),
    )
    region_name: str | None = Field(
        default=None, description="AWS region; defaults to the credentials' region."
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
    role_arn: str | None = Field(
        default=None,
        description="IAM role to assume with the credentials above (refreshed before expiry).",
    )
    endpoint_url: str | None = Field(
        default=None, description="Custom AWS API endpoint (VPC endpoint or a local stand-in)."
    )
    live_spot_prices: bool = Field(
        default=False,
        description=(
            "Rank spot placements by the current spot price of the step's instance type in "
            "each region (ec2:DescribeSpotPriceHistory) instead of the catalog's typical price."
        ),
    )
    spot_placement_scores: bool = Field(
        default=False,
        description=(
            "Weigh EC2 spot placement scores (ec2:GetSpotPlacementScores, 1-10 per region) when "
            "ranking spot placements."
        ),
    )
    events_queue_url: str | None = Field(
        default=None,
        description=(
            "SQS queue of termination events (made by `spot-workflows aws bootstrap`); "
            "needed to watch for termination notices."
        ),
    )
    job_role_arn: str | None = Field(
        default=None, description="IAM role the job's container assumes (e.g. to reach S3)."
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
    wrap: bool = Field(
        default=False,
        description="Wrap the command in spot-run (when the image has spot-workflows installed).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags added to every submitted job."
    )

    @model_validator(mode="after")
    def _key_pair(self) -> Self:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            missing = (
                "aws_secret_access_key"
                if self.aws_secret_access_key is None
                else "aws_access_key_id"
            )
            raise SettingError(
                missing, "aws_access_key_id and aws_secret_access_key must be set together"
            )
        return self

    @model_validator(mode="after")
    def _queues_or_placements(self) -> Self:
        queues = [n for n in ("spot_queue", "on_demand_queue") if getattr(self, n) is not None]
        if self.placements is not None:
            if queues:
                raise SettingError(
                    queues[0],
                    f"set placements or spot_queue/on_demand_queue, not both: move {queues[0]} "
                    "into placements (or remove placements)",
                )
            for p in self.placements:
                if not p.queue:
                    raise SettingError(
                        "placements",
                        f"placement {p.name!r} names no queue: set its queue to the job "
                        "queue's name or ARN",
                    )
                if p.zones:
                    raise SettingError(
                        "placements",
                        f"placement {p.name!r} lists zones; an AWS Batch placement is a job "
                        "queue (its compute environments choose the zones): remove zones",
                    )
            need_both_capacities(tuple(self.placements), self.KIND)
        elif len(queues) < 2:
            missing = "on_demand_queue" if self.spot_queue else "spot_queue"
            raise SettingError(
                missing,
                "Field required: set spot_queue and on_demand_queue (job queue names or ARNs), "
                "or placements",
            )
        return self

    def all_placements(self) -> tuple[Placement, ...]:
        """``placements``, else the spot and the on-demand queue as two placements."""
        if self.placements is not None:
            return tuple(self.placements)
        return (
            Placement(name=SPOT_NAME, capacity=Capacity.SPOT, queue=self.spot_queue),
            Placement(name=ON_DEMAND_NAME, capacity=Capacity.ON_DEMAND, queue=self.on_demand_queue),
        )

    # -- builders ---------------------------------------------------------------------------------
    def has_own_credentials(self) -> bool:
        """Whether these settings choose credentials (else boto3's default chain applies)."""
        return bool(self.aws_access_key_id or self.profile_name or self.role_arn)

    def boto3_session(self) -> Any:
        """The boto3 session the backend uses (see the module docs for the order); ``None``:
        boto3's default chain, resolved when a client is made."""
        if not self.has_own_credentials():
            return None
        from spot_workflows.backends import aws_sessions

        session = aws_sessions.key_session(
            access_key_id=self.aws_access_key_id,
            secret_access_key=_secret(self.aws_secret_access_key),
            session_token=_secret(self.aws_session_token),
            profile_name=self.profile_name,
            region=self.region_name,
        )
        if self.role_arn:
            return aws_sessions.assume_role_session(
                session, role_arn=self.role_arn, region=self.region_name
            )
        return session

    def build_backend(self, *, session: Any = None) -> AwsBatchBackend:
        """The AWS Batch backend; ``session`` (e.g. from a prefect-aws credentials block)
        replaces the one these settings would build."""
        from spot_workflows.backends.aws_batch import AwsBatchBackend

        queues: dict[str, Any] = (
            {"placements": self.all_placements()}
            if self.placements is not None
            else {"spot_queue": self.spot_queue, "on_demand_queue": self.on_demand_queue}
        )
        return AwsBatchBackend(
            **queues,
            region=self.region_name,
            session=session or self.boto3_session(),
            endpoint_url=self.endpoint_url,
            definition_prefix=self.definition_prefix,
            batch_retries=self.batch_retries,
            job_role_arn=self.job_role_arn,
            wrap=self.wrap,
            tags=self.tags,
            live_spot_prices=self.live_spot_prices,
            spot_placement_scores=self.spot_placement_scores,
        )

    def notice_source(self, *, since: float | None, session: Any = None) -> AwsNoticeSource:
        """The bootstrap's SQS queue of interruption warnings, rebalance recommendations and
        Batch job changes, as termination notices."""
        from spot_workflows.backends.aws_events import EventConsumer
        from spot_workflows.backends.notice_sources import AwsNoticeSource

        if not self.events_queue_url:
            raise ConfigError(
                "events_queue_url is not set: set it to the SQS queue `spot-workflows aws "
                "bootstrap` created to receive termination events"
            )
        consumer = EventConsumer(
            queue_url=self.events_queue_url,
            session=session or self.boto3_session(),
            region=self.region_name,
            endpoint_url=self.endpoint_url,
        )
        return AwsNoticeSource(consumer, since=since)

    def storage_options(self, *, session: Any = None) -> dict[str, Any]:
        """s3fs options matching the backend's credentials, region and endpoint."""
        opts: dict[str, Any] = {}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region_name:
            opts["client_kwargs"] = {"region_name": self.region_name}
        session = session or (
            self.boto3_session() if self.aws_access_key_id or self.role_arn else None
        )
        if session is not None:
            frozen = session.get_credentials().get_frozen_credentials()
            opts.update(key=frozen.access_key, secret=frozen.secret_key, token=frozen.token)
        elif self.profile_name:
            opts["profile"] = self.profile_name
        return opts
