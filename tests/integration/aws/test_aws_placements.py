"""AWS Batch placements on a real moto server: job queues in two regions (us-east-1, us-west-2),
one Batch client per region, job ids that name their region, and bad placements refused before
anything is submitted."""

from __future__ import annotations

import boto3
import pytest
from moto_lab import REGION

from spot_workflows.backends.aws_batch import TAG_PLACEMENT, AwsBatchBackend
from spot_workflows.backends.aws_bootstrap import Bootstrap, BootstrapConfig
from spot_workflows.backends.settings import AwsSettings
from spot_workflows.config import StepSpec
from spot_workflows.core.cost import Price, PriceCatalog
from spot_workflows.core.outcomes import AttemptState, Capacity
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

WEST = "us-west-2"
SPEC = StepSpec(
    key="pools-step",
    command=["python", "train.py"],
    image="public.ecr.aws/docker/library/python:3.11",
    checkpoint_uri="s3://ckpt/pools-step",
    gpus=1,
    vcpus=4,
    memory_mib=16000,
)


def client(moto, service: str, region: str):
    return boto3.client(service, endpoint_url=moto.url, region_name=region)


@pytest.fixture
def west(infra) -> dict[str, str]:
    """``spot-workflows aws bootstrap`` applied a second time, in us-west-2."""
    ec2 = client(infra.moto, "ec2", WEST)
    role = client(infra.moto, "iam", REGION).get_role(RoleName="batch-service")["Role"]["Arn"]
    config = BootstrapConfig(
        region=WEST,
        subnets=[s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:2]],
        security_groups=[g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]][
            :1
        ],
        service_role=role,
        name_prefix="sw-west",
    )
    boot = Bootstrap(config=config, endpoint_url=infra.moto.url)
    boot.apply()
    return boot.outputs()


def placements(infra, west) -> list[Placement]:
    return [
        Placement(name="east", queue=infra.outputs["spot_queue"], region=REGION),
        Placement(name="west", queue=west["spot_queue"], region=WEST, usd_per_hour=0.9),
        Placement(name="od", capacity=Capacity.ON_DEMAND, queue=infra.outputs["on_demand_queue"]),
    ]


def backend(infra, west, **kw) -> AwsBatchBackend:
    kw.setdefault("placements", placements(infra, west))
    return AwsBatchBackend(region=REGION, endpoint_url=infra.moto.url, sleep=lambda s: None, **kw)


def hold_queued(infra) -> None:
    """Jobs submitted from now on stay SUBMITTED (queued: no capacity yet), as in the
    lifecycle tests: moto's threaded job model with a progression that never advances."""
    infra.moto.batch_docker_mode(True)
    infra.moto.job_transition({"progression": "manual", "times": 10**9})


def run_now(region: str, job_id: str) -> None:
    """The cloud starts the job: moto's job model (this process runs the server) goes RUNNING.

    moto without Docker cannot hold a job RUNNING by itself; a job submitted in moto's simple
    mode has no thread that moves it on, so setting its state is what AWS would report."""
    from moto.batch import batch_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    job = batch_backends[DEFAULT_ACCOUNT_ID][region]._jobs[job_id]
    job.job_stopped = False
    job.status = "RUNNING"


def test_submit_describe_find_and_cancel_across_two_regions(infra, west):
    be = backend(infra, west)
    assert [p.name for p in be.placements] == ["east", "west", "od"]
    assert be.queues == {
        Capacity.SPOT: infra.outputs["spot_queue"],
        Capacity.ON_DEMAND: infra.outputs["on_demand_queue"],
    }
    be.check_spec(SPEC)  # both regions' queues are there

    hold_queued(infra)
    east_id = be.submit(SPEC, job_name="pools-1", attempt=1, capacity=Capacity.SPOT)
    west_id = be.submit(
        SPEC, job_name="pools-2", attempt=2, capacity=Capacity.SPOT, placement="west"
    )
    # a job at home keeps its plain Batch id; one in the other region is named by its ARN
    assert not east_id.startswith("arn:")
    assert west_id.startswith(f"arn:aws:batch:{WEST}:") and "/" in west_id
    west_plain = west_id.rsplit("/", 1)[-1]
    west_batch = client(infra.moto, "batch", WEST)
    [job] = west_batch.describe_jobs(jobs=[west_plain])["jobs"]
    assert job["jobQueue"].endswith(f"job-queue/{west['spot_queue']}")
    assert job["tags"][TAG_PLACEMENT] == "west"
    assert client(infra.moto, "batch", REGION).describe_jobs(jobs=[west_plain])["jobs"] == []
    # the job definition was registered in us-west-2 too (a definition is regional)
    assert west_batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]

    seen = be.describe([east_id, west_id, "no-such-job"])
    assert set(seen) == {east_id, west_id}
    assert seen[east_id].state is AttemptState.PENDING
    assert seen[west_id].state is AttemptState.PENDING and seen[west_id].job_id == west_id

    assert be.find("pools-1") == east_id
    assert be.find("pools-2") == west_id  # found in the other region's queue
    assert be.find("pools-3") is None

    be.cancel(east_id, reason="raced: west started first")
    [cancelled] = client(infra.moto, "batch", REGION).describe_jobs(jobs=[east_id])["jobs"]
    assert cancelled["statusReason"] == "raced: west started first"
    assert "statusReason" not in west_batch.describe_jobs(jobs=[west_plain])["jobs"][0]


def test_a_job_in_the_second_region_is_seen_running(infra, west):
    be = backend(infra, west)
    infra.moto.batch_docker_mode(False)
    west_id = be.submit(
        SPEC, job_name="pools-run", attempt=1, capacity=Capacity.SPOT, placement="west"
    )
    run_now(WEST, west_id.rsplit("/", 1)[-1])
    obs = be.describe([west_id])[west_id]
    assert obs.state is AttemptState.RUNNING and obs.started_at is not None

    od_id = be.submit(SPEC, job_name="pools-od", attempt=2, capacity=Capacity.ON_DEMAND)
    assert not od_id.startswith("arn:")
    assert [j["jobId"] for j in infra.jobs(infra.outputs["on_demand_queue"])] == [od_id]


def test_the_single_queue_configuration_is_one_placement_per_capacity(infra):
    be = infra.backend()
    assert [(p.name, p.capacity, p.queue) for p in be.placements] == [
        ("spot", Capacity.SPOT, infra.outputs["spot_queue"]),
        ("on-demand", Capacity.ON_DEMAND, infra.outputs["on_demand_queue"]),
    ]
    job_id = be.submit(SPEC, job_name="single-1", attempt=1, capacity=Capacity.SPOT)
    assert [j["jobId"] for j in infra.jobs(infra.outputs["spot_queue"])] == [job_id]


def test_settings_build_the_backend_with_its_placements(infra, west):
    data = {
        "region_name": REGION,
        "endpoint_url": infra.moto.url,
        "placements": [p.model_dump(mode="json") for p in placements(infra, west)],
    }
    be = AwsSettings.load(data, what="connection 'pools' extras").build_backend()
    assert [p.name for p in be.placements] == ["east", "west", "od"]
    be.check_spec(SPEC)


def test_prices_per_placement_come_from_the_placement_else_the_regional_catalog(infra, west):
    catalog = PriceCatalog(
        snapshot="test",
        entries=[
            Price(
                provider="aws", instance_type="g5.xlarge", region=REGION, on_demand=1.0, spot=0.4
            ),
            Price(provider="aws", instance_type="g5.xlarge", region=WEST, on_demand=1.1, spot=0.5),
        ],
    )
    be = backend(infra, west)
    assert be.price_per_hour("east", instance_type="g5.xlarge", catalog=catalog) == 0.4
    assert be.price_per_hour("west", instance_type="g5.xlarge", catalog=catalog) == 0.9
    assert be.price_per_hour("od", instance_type="g5.xlarge", catalog=catalog) == 1.0
    assert be.price_per_hour("east", instance_type="p9.huge", catalog=catalog) is None


BAD = [
    pytest.param([], "placements: the list is empty", id="empty"),
    pytest.param(
        [{"name": "a", "queue": "q1"}, {"name": "a", "queue": "q2"}],
        "placement name 'a' appears twice",
        id="duplicate-name",
    ),
    pytest.param(
        [{"name": "a", "queue": "q1"}, {"name": "b", "queue": "q1"}],
        "'a' and 'b' are the same place",
        id="duplicate-place",
    ),
    pytest.param([{"name": "a", "queue": "q1"}], "at least one ON_DEMAND placement", id="no-od"),
    pytest.param(
        [{"name": "a"}, {"name": "o", "capacity": "ON_DEMAND", "queue": "q"}],
        "placement 'a' names no queue",
        id="no-queue",
    ),
    pytest.param(
        [{"name": "a", "queue": "q", "region": "mars"}, {"name": "o", "capacity": "ON_DEMAND", "queue": "q"}],
        "not an AWS region name",
        id="bad-region",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("given", "says"), BAD)
def test_bad_placements_are_one_line_errors_before_any_call(infra, given, says):
    with pytest.raises(ConfigError) as info:
        AwsBatchBackend(
            placements=given, region=REGION, endpoint_url=infra.moto.url, sleep=lambda s: None
        )
    assert says in str(info.value) and "\n" not in str(info.value)
    assert infra.jobs(infra.outputs["spot_queue"]) == []


@pytest.mark.parametrize(
    ("region", "queue", "says"),
    [
        pytest.param("eu-north-9", None, "which these AWS credentials cannot reach", id="region"),
        pytest.param(WEST, "nowhere", "which does not exist in region us-west-2", id="queue"),
    ],
)
def test_a_placement_the_credentials_cannot_reach_fails_before_anything_is_submitted(
    infra, west, region, queue, says
):
    given = [
        *placements(infra, west)[:1],
        Placement(name="far", queue=queue or west["spot_queue"], region=region),
        placements(infra, west)[2],
    ]
    be = backend(infra, west, placements=given, retry=None)
    with pytest.raises(ConfigError) as info:
        be.check_spec(SPEC)
    text = str(info.value)
    assert "placement 'far'" in text and says in text and "\n" not in text, text
    assert infra.jobs(infra.outputs["spot_queue"]) == []  # nothing was submitted anywhere
    assert (
        client(infra.moto, "batch", WEST).list_jobs(jobQueue=west["spot_queue"])["jobSummaryList"]
        == []
    )


def test_the_runner_races_two_regions_and_cancels_the_loser(infra, west, tmp_path):
    """The runner with the pool planner on moto: a pending attempt in each region's spot queue;
    when us-west-2's starts, us-east-1's is cancelled at once and recorded RACED."""
    from spot_workflows.config import SpotPolicy
    from spot_workflows.core.outcomes import Action, Outcome
    from spot_workflows.runner import StepRunner

    be = backend(infra, west)
    hold_queued(infra)  # jobs wait for capacity until the test starts one
    spec = StepSpec(
        key="pools-race",
        command=["python", "train.py"],
        image=SPEC.image,
        checkpoint_uri=f"file://{tmp_path}/ckpt",
        instance_types=["p3.2xlarge"],
        gpus=1,
        vcpus=4,
        memory_mib=16000,
    )
    runner = StepRunner(spec=spec, backend=be, policy=SpotPolicy(), poll_interval=0.01)
    prices = {p.name: p.usd_per_hour for p in runner.placements}
    assert prices["west"] == 0.9  # the placement's own price
    assert prices["east"] == 0.9731 and prices["od"] == 3.06  # the catalog's, p3.2xlarge

    def settle() -> None:
        seen = []
        for _ in range(8):
            decision = runner.tick()
            seen.append(decision)
            if decision.action is Action.WAIT:
                return
        rows = [(a.number, a.placement, a.state, a.outcome) for a in runner.ledger.attempts]
        raise AssertionError(f"the runner did not settle on WAIT: {seen} {rows}")

    settle()
    live = {a.placement: a for a in runner.ledger.live_attempts}
    assert set(live) == {"east", "west"}  # racing: one pending job per spot queue
    assert all(
        a.capacity is Capacity.SPOT and a.state is AttemptState.PENDING for a in live.values()
    )
    run_now(WEST, live["west"].job_id.rsplit("/", 1)[-1])
    settle()
    attempts = {a.placement: a for a in runner.ledger.attempts}
    assert attempts["east"].outcome is Outcome.RACED
    assert attempts["west"].state is AttemptState.RUNNING and attempts["west"].live
    [east_job] = client(infra.moto, "batch", REGION).describe_jobs(jobs=[live["east"].job_id])[
        "jobs"
    ]
    assert "spot-workflows" in east_job.get("statusReason", "")
    assert [a.placement for a in runner.ledger.live_attempts] == ["west"]  # one job runs the step


def test_live_spot_prices_rank_placements_by_the_current_price(infra, west, tmp_path):
    """``live_spot_prices``: the spot placements without a price of their own get the region's
    current spot price of the step's instance type (moto's DescribeSpotPriceHistory)."""
    from spot_workflows.backends.aws_pricing import spot_price_override
    from spot_workflows.pricing import load_catalog
    from spot_workflows.runner import StepRunner

    spec = StepSpec(
        key="pools-prices",
        command=["python", "train.py"],
        image=SPEC.image,
        checkpoint_uri=f"file://{tmp_path}/ckpt",
        instance_types=["g5.xlarge"],
    )
    live = backend(infra, west, live_spot_prices=True)
    prices = {p.name: p.usd_per_hour for p in StepRunner(spec=spec, backend=live).placements}
    current = spot_price_override(
        base=load_catalog(),
        region=REGION,
        instance_types=["g5.xlarge"],
        client=client(infra.moto, "ec2", REGION),
    ).find("aws", "g5.xlarge", REGION)
    assert current is not None and prices["east"] == current.spot
    assert prices["west"] == 0.9  # a price the user set is kept
    typical = load_catalog().find("aws", "g5.xlarge").spot
    off = {
        p.name: p.usd_per_hour
        for p in StepRunner(spec=spec, backend=backend(infra, west)).placements
    }
    assert off["east"] == typical  # without the setting: the catalog's typical price


def test_placement_scores_that_cannot_be_read_leave_the_ranking_to_prices(infra, west, caplog):
    """``spot_placement_scores`` on an endpoint without GetSpotPlacementScores (moto): a warning,
    no scores, nothing fails."""
    be = backend(infra, west, spot_placement_scores=True)
    assert be.spot_placement_scores(SPEC.model_copy(update={"instance_types": ["g5.xlarge"]})) == {}
    assert "spot placement scores unavailable" in caplog.text
    assert backend(infra, west).spot_placement_scores(SPEC) is None  # off by default
