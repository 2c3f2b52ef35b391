"""GCP Batch placements on the in-process BatchService fake and the real client: two regions
(us-central1 with a zone, europe-west4), job names unique per region, find/describe/cancel
across regions, and bad placements refused before anything is submitted."""

from __future__ import annotations

import grpc
import pytest
from google.cloud import batch_v1

from spot_workflows.backends.gcp_batch import LABEL_PLACEMENT, GcpBatchBackend
from spot_workflows.backends.settings import GcpSettings
from spot_workflows.config import StepSpec
from spot_workflows.core.cost import Price, PriceCatalog
from spot_workflows.core.outcomes import AttemptState, Capacity
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

SPOT = batch_v1.AllocationPolicy.ProvisioningModel.SPOT
STANDARD = batch_v1.AllocationPolicy.ProvisioningModel.STANDARD
SPEC = StepSpec(
    key="pools-gcp",
    command=["python", "train.py"],
    checkpoint_uri="gs://spot-ckpt/pools-gcp",
    image="us-docker.pkg.dev/proj/ml/train:1",
    instance_types=["g2-standard-8"],
)
PLACEMENTS = [
    Placement(name="central", region="us-central1", zones=("us-central1-a",)),
    Placement(name="europe", region="europe-west4", usd_per_hour=0.3),
    Placement(name="od", capacity=Capacity.ON_DEMAND, region="us-central1"),
]


def backend(batch, placements=PLACEMENTS, **kw) -> GcpBatchBackend:
    return GcpBatchBackend(
        project="proj",
        region="us-central1",
        client=batch.client(),
        placements=placements,
        sleep=lambda s: None,
        **kw,
    )


def test_two_regions_submit_describe_find_and_cancel(batch):
    be = backend(batch)
    be.check_spec(SPEC)
    central = be.submit(SPEC, job_name="pools-a1", attempt=1, capacity=Capacity.SPOT)
    europe = be.submit(
        SPEC, job_name="pools-a1", attempt=1, capacity=Capacity.SPOT, placement="europe"
    )
    od = be.submit(SPEC, job_name="pools-a2", attempt=2, capacity=Capacity.ON_DEMAND)
    # the same job name in two regions: two jobs, each named by its region
    assert central.startswith("projects/proj/locations/us-central1/jobs/")
    assert europe.startswith("projects/proj/locations/europe-west4/jobs/")
    assert central.rsplit("/", 1)[1] == europe.rsplit("/", 1)[1] and central != europe
    assert od.startswith("projects/proj/locations/us-central1/jobs/")

    sent = {j.labels[LABEL_PLACEMENT]: j for j in batch.received}
    assert set(sent) == {"central", "europe", "od"}
    assert list(sent["central"].allocation_policy.location.allowed_locations) == [
        "zones/us-central1-a"
    ]
    assert not sent["europe"].allocation_policy.location.allowed_locations
    assert sent["europe"].allocation_policy.instances[0].policy.provisioning_model == SPOT
    assert sent["od"].allocation_policy.instances[0].policy.provisioning_model == STANDARD

    batch.set_state(europe, batch_v1.JobStatus.State.RUNNING)
    seen = be.describe([central, europe, od])
    assert seen[central].state is AttemptState.PENDING
    assert seen[europe].state is AttemptState.RUNNING

    assert be.find("pools-a2") == od
    only_europe = "pools-b"
    eu_only = be.submit(
        SPEC, job_name=only_europe, attempt=3, capacity=Capacity.SPOT, placement="europe"
    )
    assert be.find(only_europe) == eu_only  # found in the second region
    assert be.find("pools-none") is None

    be.cancel(central, reason="raced: europe started first")
    assert [r.name for r in batch.requests("DeleteJob")] == [central]
    batch.advance()
    assert set(be.describe([central, europe])) == {europe}  # the deleted job is gone


def test_region_and_zones_are_one_placement_per_capacity(batch):
    be = GcpBatchBackend(
        project="proj", region="us-central1", zones=["us-central1-b"], client=batch.client()
    )
    assert [(p.name, p.capacity, p.region, p.zones) for p in be.placements] == [
        ("spot", Capacity.SPOT, "us-central1", ("us-central1-b",)),
        ("on-demand", Capacity.ON_DEMAND, "us-central1", ("us-central1-b",)),
    ]
    job = be.submit(SPEC, job_name="single-1", attempt=1, capacity=Capacity.SPOT)
    assert job.startswith("projects/proj/locations/us-central1/jobs/")
    assert list(batch.received[0].allocation_policy.location.allowed_locations) == [
        "zones/us-central1-b"
    ]


def test_settings_placements_build_the_backend(batch):
    settings = GcpSettings.load(
        {
            "project": "proj",
            "emulator_host": batch.host,
            "placements": [p.model_dump(mode="json") for p in PLACEMENTS],
        },
        what="connection 'g' extras",
    )
    assert settings.home_region() == "us-central1"
    be = settings.build_backend()
    assert [p.name for p in be.placements] == ["central", "europe", "od"]
    assert be.submit(
        SPEC, job_name="s-1", attempt=1, capacity=Capacity.SPOT, placement="europe"
    ).startswith("projects/proj/locations/europe-west4/")


def test_prices_per_placement(batch):
    catalog = PriceCatalog(
        snapshot="t",
        entries=[
            Price(provider="gcp", instance_type="g2-standard-8", region="us-central1", on_demand=0.85, spot=0.25)
        ],
    )  # fmt: skip
    be = backend(batch)
    assert be.price_per_hour("central", machine_type="g2-standard-8", catalog=catalog) == 0.25
    assert be.price_per_hour("od", machine_type="g2-standard-8", catalog=catalog) == 0.85
    assert be.price_per_hour("europe", machine_type="g2-standard-8", catalog=catalog) == 0.3


BAD = [
    pytest.param([], "the list is empty", id="empty"),
    pytest.param(
        [{"name": "a", "region": "us-central1"}, {"name": "a", "region": "us-east1"}],
        "'a' appears twice",
        id="duplicate-name",
    ),
    pytest.param(
        [{"name": "a", "region": "us-east1"}, {"name": "b", "region": "us-east1"}],
        "the same place",
        id="duplicate-place",
    ),
    pytest.param([{"name": "a", "region": "us-east1"}], "at least one ON_DEMAND", id="no-od"),
    pytest.param(
        [{"name": "a", "region": "us-east1", "zones": ["europe-west4-a"]}, {"name": "o", "capacity": "ON_DEMAND"}],
        "zone 'europe-west4-a', which is not in its region 'us-east1'",
        id="zone-elsewhere",
    ),
    pytest.param(
        [{"name": "a", "region": "Mars"}, {"name": "o", "capacity": "ON_DEMAND"}],
        "use a GCP region",
        id="bad-region",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("given", "says"), BAD)
def test_bad_placements_are_one_line_errors(batch, given, says):
    with pytest.raises(ConfigError) as info:
        backend(batch, placements=given)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert batch.calls == []


def test_a_region_the_credentials_cannot_reach_fails_before_anything_is_submitted(batch):
    be = backend(batch, tries=1)
    batch.fail_next(
        "ListJobs",
        grpc.StatusCode.PERMISSION_DENIED,
        "Batch API has not been used in project proj before or it is disabled\nin europe-west4",
    )
    with pytest.raises(ConfigError) as info:
        be.check_spec(SPEC)
    text = str(info.value)
    assert "placement 'europe'" in text and "europe-west4" in text and "\n" not in text, text
    assert "cannot reach" in text
    assert batch.count("CreateJob") == 0
    [listed] = batch.requests("ListJobs")
    assert listed.parent == "projects/proj/locations/europe-west4"
