"""Spot pools end to end: the runner, the pool planner and the local spot cloud with several
markets (real daemon, real subprocesses, real checkpoints).

* a step races pending attempts in two and three markets, runs where spot is, and the losers
  are recorded RACED (not reclaims, not failures);
* a reclaim in one market sends the next attempt elsewhere;
* warm handoff: a step on ON_DEMAND keeps a spot probe; when the probe starts the policy switches,
  the on-demand worker saves on the handoff notice and exits, and the spot worker resumes from
  that save to a bit-identical result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Capacity, Outcome
from spot_workflows.core.placements import Placement
from spot_workflows.examples.toy_train import reference
from spot_workflows.runner import StepRunner

STEPS = 60


def train(steps: int = STEPS, step_s: float = 0.03) -> list[str]:
    return [
        sys.executable,
        "-m",
        "spot_workflows.examples.toy_train",
        f"--steps={steps}",
        "--every=10",
        f"--step-seconds={step_s}",
    ]


def spec_for(tmp_path: Path, key: str, command: list[str]) -> StepSpec:
    return StepSpec(key=key, command=command, checkpoint_uri=f"file://{tmp_path / 'ckpt' / key}")


NO_SPOT = {"unavailable": [(0.0, 3600.0)]}


def backend_with(tmp_path: Path, markets: dict[str, ScheduledMarket], **extra) -> LocalBackend:
    placements = [
        Placement(name=name, usd_per_hour=extra.get("prices", {}).get(name)) for name in markets
    ] + [Placement(name="on-demand", capacity=Capacity.ON_DEMAND)]
    return LocalBackend(
        state_dir=tmp_path / "cloud",
        placements=placements,
        markets=markets,
        notice_window_s=0.5,
        grace_s=2.0,
    )


def last_checksum(backend: LocalBackend, job_id: str) -> int:
    return json.loads(backend.log_path(job_id).read_text().strip().splitlines()[-1])["checksum"]


def resumed_at(backend: LocalBackend, job_id: str) -> int | None:
    """The step the worker resumed from (its ``RESUME N`` line), None when it started afresh."""
    for line in backend.log_path(job_id).read_text().splitlines():
        if line.startswith("RESUME "):
            return int(line.split()[1])
    return None


def run(tmp_path: Path, backend: LocalBackend, key: str, policy: SpotPolicy, **kw):
    spec = spec_for(tmp_path, key, kw.pop("command", train()))
    events = []
    runner = StepRunner(
        spec=spec, backend=backend, policy=policy, poll_interval=0.05, on_event=events.append
    )
    return runner.run(), events


def test_a_step_races_two_markets_and_runs_where_spot_is(tmp_path):
    markets = {"zone-a": ScheduledMarket(**NO_SPOT), "zone-b": ScheduledMarket()}
    with backend_with(tmp_path, markets) as backend:
        result, events = run(tmp_path, backend, "race2", SpotPolicy())
        winner = result.attempts[-1]
        checksum = last_checksum(backend, winner.job_id)
    assert result.succeeded
    assert (winner.placement, winner.capacity, winner.outcome) == (
        "zone-b",
        Capacity.SPOT,
        Outcome.SUCCEEDED,
    )
    losers = [a for a in result.attempts if a is not winner]
    assert losers and all(a.placement == "zone-a" for a in losers)
    assert all(a.outcome is Outcome.RACED for a in losers)
    assert any(e.kind == "raced" for e in events)
    assert not result.escalated and result.summary.preemptions == 0
    assert checksum == reference(STEPS, 7)


def test_three_markets_the_one_with_capacity_wins(tmp_path):
    markets = {
        "zone-a": ScheduledMarket(**NO_SPOT),
        "zone-b": ScheduledMarket(**NO_SPOT),
        "zone-c": ScheduledMarket(),
    }
    with backend_with(tmp_path, markets) as backend:
        result, _ = run(tmp_path, backend, "race3", SpotPolicy())
    assert result.succeeded
    assert result.attempts[-1].placement == "zone-c"
    raced = {a.placement for a in result.attempts if a.outcome is Outcome.RACED}
    assert raced == {"zone-a", "zone-b"}
    assert len(result.attempts) == 3  # one attempt per market: no duplicate in any of them


def test_after_a_reclaim_the_next_attempt_goes_to_another_market(tmp_path):
    # one placement at a time (race_placements=1): zone-a first, being cheaper; it reclaims its
    # first attempt after a save
    markets = {
        "zone-a": ScheduledMarket(reclaims=[0.5], after_checkpoint=True),
        "zone-b": ScheduledMarket(),
    }
    backend = backend_with(tmp_path, markets, prices={"zone-a": 0.5, "zone-b": 0.9})
    with backend:
        policy = SpotPolicy(race_placements=1)
        result, _ = run(tmp_path, backend, "reclaim", policy, command=train(step_s=0.05))
        winner = next(a for a in result.attempts if a.outcome is Outcome.SUCCEEDED)
        checksum = last_checksum(backend, winner.job_id)
    assert result.succeeded
    ran = [a for a in result.attempts if a.outcome is not Outcome.RACED]
    assert (ran[0].placement, ran[0].outcome) == ("zone-a", Outcome.PREEMPTED)
    rows = [(a.number, a.placement, a.outcome) for a in result.attempts]
    assert ran[1].placement == "zone-b", rows
    assert ran[-1] == winner and len(result.attempts) == 2, rows
    assert ran[1].resumed_from_step is not None  # resumed from zone-a's checkpoint
    assert checksum == reference(STEPS, 7)


def test_handoff_from_on_demand_back_to_spot(tmp_path):
    # spot in zone-a only after 6 s: uniform progress goes on ON_DEMAND at once, keeps a spot
    # probe pending, and switches back when the probe starts (it is ahead of its line by then)
    markets = {"zone-a": ScheduledMarket(unavailable=[(0.0, 6.0)])}
    policy = SpotPolicy(
        strategy="uniform_progress", deadline_s=120.0, work_s=12.0, restart_overhead_s=0.5
    )
    with backend_with(tmp_path, markets) as backend:
        result, events = run(
            tmp_path, backend, "handoff", policy, command=train(steps=200, step_s=0.05)
        )
        winner = next(a for a in result.attempts if a.outcome is Outcome.SUCCEEDED)
        checksum = last_checksum(backend, winner.job_id)
        resumed = resumed_at(backend, winner.job_id)
    assert result.succeeded
    ran = [a for a in result.attempts if a.outcome is not Outcome.RACED]
    od = next(a for a in ran if a.capacity is Capacity.ON_DEMAND)
    assert od.handoff and od.outcome is Outcome.STOPPED
    last = ran[-1]
    assert (last.capacity, last.placement, last.outcome) == (
        Capacity.SPOT,
        "zone-a",
        Outcome.SUCCEEDED,
    )
    assert last.number > od.number
    # the spot worker waited for the on-demand worker's handoff save and resumed from it
    assert resumed is not None and resumed == od.last_checkpoint_step > 0
    assert any(e.kind == "handoff" for e in events)
    assert checksum == reference(200, 7)
