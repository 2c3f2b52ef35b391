"""'Wait until you own the step' and the handoff marker, with real spot-run subprocesses.

The ledger is driven the way the pool runner drives it (a second live attempt, ``stopping=RACED``,
``stopping=STOPPED, handoff=True`` then finished); the workers are real ``spot-run`` processes,
alone or as jobs of the local spot cloud running the deterministic toy trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import NeverReclaimed
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, Outcome
from spot_workflows.core.placements import Placement
from spot_workflows.demo import last_step_in_log
from spot_workflows.examples.toy_train import reference
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.handoff import read_marker, write_marker

SPOT_RUN = [sys.executable, "-m", "spot_workflows.runtime.worker.entrypoint"]
TRAIN = [sys.executable, "-m", "spot_workflows.examples.toy_train"]


def wait_for(predicate, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def add_live(ledger: Ledger, capacity: Capacity, placement: str | None = None) -> Attempt:
    """Record a live SPOT attempt beside the live one (a racer or a probe), as the runner does."""
    return ledger.begin(
        capacity=capacity,
        backend="local",
        now=time.time(),
        placement=placement,
        beside_live=True,
    )


@pytest.fixture
def step(tmp_path):
    uri = (tmp_path / "ckpt").as_uri()
    store = CheckpointStore(uri)
    ledger = Ledger.open(store, "s")
    first = ledger.begin(capacity=Capacity.ON_DEMAND, backend="local", now=time.time())
    return uri, store, ledger, first


def spot_run(tmp_path: Path, uri: str, attempt: int, **env: str) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPOT_", "AWS_", "GCE_"))}
    base.update(
        {
            "SPOT_CHECKPOINT_URI": uri,
            "SPOT_ATTEMPT": str(attempt),
            "SPOT_STEP_KEY": "s",
            "SPOT_NOTICE_SOURCE": "auto",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            **env,
        }
    )
    ran = tmp_path / f"ran-{attempt}"
    child = f"import pathlib; pathlib.Path({str(ran)!r}).write_text('ran')"
    return subprocess.Popen(
        [*SPOT_RUN, "--poll", "0.1", "--", sys.executable, "-c", child],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_one_live_attempt_runs_at_once(step, tmp_path):
    uri, _, _, first = step
    started = time.monotonic()
    proc = spot_run(tmp_path, uri, first.number)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (tmp_path / "ran-1").exists() and "does not own" not in err
    assert time.monotonic() - started < 10


def test_with_two_live_attempts_the_second_waits_until_the_first_is_done(step, tmp_path):
    uri, _, ledger, first = step
    second = add_live(ledger, Capacity.SPOT, "b")
    proc = spot_run(tmp_path, uri, second.number)
    time.sleep(2.0)
    assert proc.poll() is None and not (tmp_path / "ran-2").exists()  # waiting, child not started
    ledger.finish(first, Outcome.STOPPED, now=time.time(), reason="handed off")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (tmp_path / "ran-2").exists()
    assert "attempt 2 does not own the step yet: waiting for attempt(s) 1" in err


@pytest.mark.parametrize("when", ["before start", "while waiting"])
def test_a_raced_attempt_exits_0_without_running_or_writing(step, tmp_path, when):
    uri, _, ledger, _ = step
    second = add_live(ledger, Capacity.SPOT, "b")
    if when == "before start":
        ledger.update(second, stopping=Outcome.RACED)
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    proc = spot_run(tmp_path, uri, second.number)
    if when == "while waiting":
        time.sleep(1.5)
        assert proc.poll() is None
        ledger.update(second, stopping=Outcome.RACED)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cancelled as raced" in err
    assert not (tmp_path / "ran-2").exists()
    after = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert after == before and not any(name.startswith("step") for name in after)


def test_an_attempt_that_never_gets_the_step_exits_75_without_running(step, tmp_path):
    uri, _, ledger, _ = step
    second = add_live(ledger, Capacity.SPOT, "b")
    proc = spot_run(tmp_path, uri, second.number, SPOT_OWNERSHIP_WAIT_S="0.5")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "did not get the step within 0.5s" in err and "SPOT_OWNERSHIP_WAIT_S" in err
    assert not (tmp_path / "ran-2").exists()


def test_handoff_on_demand_to_spot_resumes_bit_identical(tmp_path):
    """The on-demand worker sees its marker, saves and exits 75; the spot worker, started in
    another market meanwhile, waits until the on-demand attempt is done and resumes from that
    very checkpoint; the result equals an uninterrupted run's."""
    steps = 400
    uri = (tmp_path / "ckpt").as_uri()
    spec = StepSpec(
        key="s",
        command=[*TRAIN, f"--steps={steps}", "--every=50", "--step-seconds=0.01"],
        checkpoint_uri=uri,
    )
    store = CheckpointStore(uri)
    ledger = Ledger.open(store, "s")
    backend = LocalBackend(
        state_dir=tmp_path / "cloud",
        placements=[
            Placement(name="a"),
            Placement(name="b"),
            Placement(name="od", capacity="ON_DEMAND"),
        ],
        markets={"a": {"kind": "scheduled", "unavailable": [[0, 3600]]}, "b": NeverReclaimed()},
    ).start()

    od = ledger.begin(capacity=Capacity.ON_DEMAND, backend="local", now=time.time(), placement="od")
    od_job = backend.submit(
        spec, job_name=od.job_name, attempt=1, capacity=Capacity.ON_DEMAND, placement="od"
    )
    ledger.set_job_id(od, od_job)
    wait_for(lambda: (last_step_in_log(backend.log_path(od_job)) or 0) >= 60)

    probe = add_live(ledger, Capacity.SPOT, "b")
    spot_job = backend.submit(
        spec, job_name=probe.job_name, attempt=2, capacity=Capacity.SPOT, placement="b"
    )
    wait_for(lambda: backend.describe([spot_job])[spot_job].state is AttemptState.RUNNING)
    time.sleep(1.0)
    assert "START" not in backend.log_path(spot_job).read_text()  # waits: it does not own the step
    assert backend.describe([od_job])[od_job].state is AttemptState.RUNNING

    write_marker(store, 1, reason="spot is back in placement b")
    ledger.update(od, stopping=Outcome.STOPPED, handoff=True)
    obs = wait_for(
        lambda: (o := backend.describe([od_job])[od_job]).state is AttemptState.DONE and o
    )
    assert obs.exit_code == 75
    ledger.observe(od, obs)
    od_log = backend.log_path(od_job).read_text()
    (saved,) = [
        int(line.split()[1]) for line in od_log.splitlines() if line.startswith("EMERGENCY")
    ]
    assert saved < steps and "HANDOFF notice from handoff" in od_log
    assert read_marker(store, 1) is not None

    done = wait_for(
        lambda: (o := backend.describe([spot_job])[spot_job]).state is AttemptState.DONE and o,
        timeout=120,
    )
    spot_log = backend.log_path(spot_job).read_text()
    assert done.exit_code == 0, spot_log
    assert f"RESUME {saved}" in spot_log  # from the handoff checkpoint, nothing lost or redone
    assert "attempt 2 does not own the step yet: waiting for attempt(s) 1" in spot_log
    result = json.loads(spot_log.strip().splitlines()[-1])
    assert result == {"checksum": reference(steps, 7), "step": steps}
