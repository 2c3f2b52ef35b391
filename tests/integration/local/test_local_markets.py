"""The local spot cloud with several markets per step (one per SPOT placement).

Real daemon, real supervisors and subprocesses: a pending job starts when *its* market has spot,
a reclaim in one market touches no job in another, each market counts its own attempts, and a
backend built without placements behaves exactly as before (one market per step).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import NeverReclaimed, ScheduledMarket
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
NO_SPOT = ScheduledMarket(unavailable=[(0.0, 3600.0)])


def wait_for(predicate, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def spec(tmp_path: Path, key: str = "step") -> StepSpec:
    uri = (tmp_path / "ckpt" / key).as_uri()
    return StepSpec(key=key, command=SLEEPER, checkpoint_uri=uri)


def state_of(backend: LocalBackend, job: str) -> AttemptState:
    return backend.describe([job])[job].state


def submit(backend: LocalBackend, step: StepSpec, n: int, placement: str, capacity=Capacity.SPOT):
    return backend.submit(
        step, job_name=f"{step.key}-{n}", attempt=n, capacity=capacity, placement=placement
    )


def stop(backend: LocalBackend, *jobs: str) -> None:
    for job in jobs:
        backend.cancel(job, reason="test over")


def test_two_markets_start_independently(tmp_path):
    backend = LocalBackend(
        state_dir=tmp_path / "cloud",
        wrap=False,
        placements=[
            Placement(name="a"),
            Placement(name="b"),
            {"name": "od", "capacity": "ON_DEMAND"},
        ],
        markets={"a": NO_SPOT, "b": NeverReclaimed()},
    ).start()
    step = spec(tmp_path)
    in_a, in_b = submit(backend, step, 1, "a"), submit(backend, step, 2, "b")
    wait_for(lambda: state_of(backend, in_b) is AttemptState.RUNNING)
    time.sleep(1.0)  # many ticks: market a still has no spot
    assert state_of(backend, in_a) is AttemptState.PENDING
    assert backend.spot_available(step.key, "a") is False
    assert backend.spot_available(step.key, "b") is True
    assert backend.spot_available(step.key) is False  # None: the first SPOT placement (a)
    on_demand = submit(backend, step, 3, "od", Capacity.ON_DEMAND)  # never waits on a market
    wait_for(lambda: state_of(backend, on_demand) is AttemptState.RUNNING)
    rows = {r["job_id"]: r for r in backend.jobs()}
    assert (rows[in_a]["placement"], rows[in_b]["placement"], rows[on_demand]["placement"]) == (
        "a",
        "b",
        "od",
    )
    stop(backend, in_a, in_b, on_demand)
    obs = wait_for(lambda: (o := backend.describe([in_a])[in_a]).state is AttemptState.DONE and o)
    assert obs.outcome is Outcome.CANCELLED


def test_a_reclaim_in_one_market_leaves_the_other_running(tmp_path):
    backend = LocalBackend(
        state_dir=tmp_path / "cloud",
        wrap=False,
        notice_window_s=0.5,
        grace_s=0.5,
        placements=[Placement(name="a"), Placement(name="b")],
        markets={"a": ScheduledMarket(reclaims=[1.0]), "b": ScheduledMarket(reclaims=[30.0])},
    ).start()
    step = spec(tmp_path)
    in_a, in_b = submit(backend, step, 1, "a"), submit(backend, step, 2, "b")
    obs = wait_for(lambda: (o := backend.describe([in_a])[in_a]).state is AttemptState.DONE and o)
    assert obs.outcome is Outcome.PREEMPTED
    assert state_of(backend, in_b) is AttemptState.RUNNING
    events = [(e["event"], e["job_id"], e["placement"]) for e in backend.market_events()]
    assert ("notice", in_a, "a") in events
    assert all(job != in_b for _, job, _ in events)
    stop(backend, in_b)


def test_three_markets_each_with_its_own_capacity_and_count(tmp_path):
    """a: spot only after 1.5 s; b: no spot; c: spot now, its first attempt reclaimed at 1 s.
    A second attempt in c is c's second (never reclaimed), whatever a and b did."""
    backend = LocalBackend(
        state_dir=tmp_path / "cloud",
        wrap=False,
        notice_window_s=0.2,
        grace_s=0.5,
        placements=[
            {"name": "a", "market": ScheduledMarket(unavailable=[(0.0, 1.5)])},
            {"name": "b", "market": {"kind": "scheduled", "unavailable": [[0.0, 3600.0]]}},
            {"name": "c", "market": ScheduledMarket(reclaims=[1.0])},
        ],
    ).start()
    assert [p.name for p in backend.placements] == ["a", "b", "c", "on-demand"]
    step = spec(tmp_path)
    t0 = time.monotonic()
    jobs = {name: submit(backend, step, n, name) for n, name in enumerate("abc", start=1)}
    wait_for(lambda: state_of(backend, jobs["c"]) is AttemptState.RUNNING)
    assert state_of(backend, jobs["a"]) is AttemptState.PENDING or time.monotonic() - t0 >= 1.4
    wait_for(lambda: state_of(backend, jobs["a"]) is AttemptState.RUNNING)
    assert time.monotonic() - t0 >= 1.4  # a started when its own market got spot
    obs = wait_for(
        lambda: (o := backend.describe([jobs["c"]])[jobs["c"]]).state is AttemptState.DONE and o
    )
    assert obs.outcome is Outcome.PREEMPTED
    again = submit(backend, step, 4, "c")
    wait_for(lambda: state_of(backend, again) is AttemptState.RUNNING)
    time.sleep(1.5)  # past where c's first-attempt schedule would reclaim it
    assert state_of(backend, again) is AttemptState.RUNNING
    assert state_of(backend, jobs["a"]) is AttemptState.RUNNING
    assert state_of(backend, jobs["b"]) is AttemptState.PENDING
    markets = json.loads((tmp_path / "cloud" / "markets.json").read_text())
    assert {k: v["launched"] for k, v in markets.items()} == {"step@a": 1, "step@b": 0, "step@c": 2}
    stop(backend, again, *jobs.values())


def test_without_placements_there_is_one_market_per_step_as_before(tmp_path):
    backend = LocalBackend(
        state_dir=tmp_path / "cloud", wrap=False, market=ScheduledMarket(reclaims=[30.0])
    ).start()
    assert [(p.name, p.capacity) for p in backend.placements] == [
        ("spot", Capacity.SPOT),
        ("on-demand", Capacity.ON_DEMAND),
    ]
    step = spec(tmp_path)
    job = backend.submit(step, job_name="step-1", attempt=1, capacity=Capacity.SPOT)
    wait_for(lambda: state_of(backend, job) is AttemptState.RUNNING)
    doc = json.loads((tmp_path / "cloud" / "jobs" / job / "job.json").read_text())
    assert "placement" not in doc and doc["market_key"] == "step"
    assert list(json.loads((tmp_path / "cloud" / "markets.json").read_text())) == ["step"]
    assert backend.spot_available("step") is True
    stop(backend, job)


def test_bad_placements_and_markets_are_refused_before_anything_runs(tmp_path):
    state = tmp_path / "cloud"
    with pytest.raises(ConfigError, match="'z' is not a SPOT placement; name one of a"):
        LocalBackend(state_dir=state, placements=[Placement(name="a")], markets={"z": NO_SPOT})
    with pytest.raises(ConfigError, match="appears twice"):
        LocalBackend(state_dir=state, placements=[Placement(name="a"), Placement(name="a")])
    with pytest.raises(ConfigError, match="the list is empty"):
        LocalBackend(state_dir=state, placements=[])
    with pytest.raises(ConfigError, match="malformed market spec"):
        LocalBackend(state_dir=state, placements=[{"name": "a", "market": {"kind": "trace"}}])
    backend = LocalBackend(state_dir=state, placements=[Placement(name="a")])
    with pytest.raises(ConfigError, match="'b' is not a SPOT placement of this local backend"):
        backend.submit(
            spec(tmp_path), job_name="x-1", attempt=1, capacity=Capacity.SPOT, placement="b"
        )
    with pytest.raises(ConfigError, match="'a' is not a ON_DEMAND placement"):
        backend.placement_for(Capacity.ON_DEMAND, "a")
    assert not (state / "jobs").exists()  # nothing reached the daemon
