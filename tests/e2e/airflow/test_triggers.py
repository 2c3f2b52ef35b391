"""The triggers: exact serialize() round trips, and what they fire on against a real backend."""

from __future__ import annotations

import asyncio
import time

import pytest
from airflow.sdk import Asset, AssetWatcher
from airflow.sdk.module_loading import import_string
from airflow.sdk.serde import deserialize, serialize

from spot_workflows.airflow.connections import EVENTS_FILE, build_backend
from spot_workflows.airflow.hooks import SpotBackendHook
from spot_workflows.airflow.triggers import SpotJobTrigger, SpotTerminationTrigger
from spot_workflows.backends.local.events import append_event
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

TRIGGERS = [
    SpotJobTrigger(spot_conn_id="aws_spot", job_id="4f0c-9a", poll_interval=2.5, wake_at=1.8e9),
    SpotJobTrigger(spot_conn_id="spot_local_default", job_id="local-1"),
    SpotJobTrigger(
        spot_conn_id="spot_local_default",
        job_id="local-2",
        not_before=1.8e9,
        checkpoint_uri="file:///tmp/ckpt/d.t.r",
        step_key="d.t.r",
        watcher="d/t/r/-1#try3",
    ),
    SpotJobTrigger(
        spot_conn_id="aws_spot",
        job_id="4f0c-9a",
        other_job_ids=["arn:aws:batch:us-east-1:123456789012:job/77aa"],
        job_state="PENDING",
    ),
    SpotTerminationTrigger(
        spot_conn_id="gcp_spot",
        step_key="train.run-1",
        job_queue="spot-gpu",
        kinds=["preempted", "INTERRUPTION"],
        since=1.7e9,
        checkpoint_uri="gs://bucket/ckpt/train.run-1",
        poll_interval=1,
    ),
    SpotTerminationTrigger(spot_conn_id="spot_local_default"),
]


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: type(t).__name__)
def test_serialize_round_trips_exactly(trigger):
    classpath, kwargs = trigger.serialize()
    # through Airflow's own encoding of trigger kwargs (what the triggerer stores) and back
    restored = import_string(classpath)(**deserialize(serialize(kwargs)))
    assert restored.serialize() == (classpath, kwargs)
    assert type(restored) is type(trigger)


def test_termination_trigger_fits_an_asset_watcher():
    trigger = SpotTerminationTrigger(spot_conn_id="spot_local_default", kinds=["INTERRUPTION"])
    asset = Asset("spot-terminations", watchers=[AssetWatcher(name="local", trigger=trigger)])
    assert asset.watchers[0].trigger is trigger


def first_event(trigger, timeout: float = 20):
    async def go():
        return await asyncio.wait_for(anext(trigger.run()), timeout)

    return asyncio.run(go()).payload


def submit(conn_id: str, tmp_path, command: list[str], capacity=Capacity.SPOT, n: int = 1) -> str:
    backend = build_backend(SpotBackendHook(spot_conn_id=conn_id).get_info())
    spec = StepSpec(key="trig", command=command, checkpoint_uri=f"file://{tmp_path}/ckpt")
    return backend.submit(spec, job_name=f"trig-a{n}", attempt=n, capacity=capacity)


def test_job_trigger_fires_when_the_job_is_done_or_gone(local_conn, tmp_path):
    conn = local_conn()
    job_id = submit(conn["conn_id"], tmp_path, ["sh", "-c", "exit 3"])
    event = first_event(
        SpotJobTrigger(spot_conn_id=conn["conn_id"], job_id=job_id, poll_interval=0.1)
    )
    reason = event.pop("reason")
    assert event == {"status": "done", "job_id": job_id, "outcome": "APP_ERROR"}
    assert reason.startswith("exit code 3; log: ") and reason.endswith(f"{job_id}/output.log")
    gone = first_event(SpotJobTrigger(spot_conn_id=conn["conn_id"], job_id="local-nope"))
    assert gone == {"status": "gone", "job_id": "local-nope"}


def test_job_trigger_wakes_the_planner_when_spot_capacity_does_not_come(local_conn, tmp_path):
    conn = local_conn(unavailable=[[0, 3600]])
    job_id = submit(conn["conn_id"], tmp_path, ["sh", "-c", "exit 0"])
    started = time.time()
    trigger = SpotJobTrigger(
        spot_conn_id=conn["conn_id"], job_id=job_id, poll_interval=30, wake_at=started + 0.5
    )
    assert first_event(trigger) == {"status": "wake", "job_id": job_id, "state": "PENDING"}
    assert 0.4 < time.time() - started < 5  # woke at wake_at, not after the 30 s poll interval


def test_job_trigger_fires_when_a_racing_job_starts(local_conn, tmp_path):
    conn = local_conn(unavailable=[[0, 3600]])  # spot never comes: the watched job stays pending
    waiting = submit(conn["conn_id"], tmp_path, ["sh", "-c", "sleep 30"])
    other = submit(conn["conn_id"], tmp_path, ["sh", "-c", "sleep 30"], Capacity.ON_DEMAND, n=2)
    trigger = SpotJobTrigger(
        spot_conn_id=conn["conn_id"],
        job_id=waiting,
        other_job_ids=[other],
        job_state="PENDING",
        poll_interval=0.1,
    )
    assert first_event(trigger) == {
        "status": "changed",
        "job_id": waiting,
        "other_job_id": other,
        "state": "RUNNING",
    }


def test_job_trigger_fires_when_its_own_job_starts_while_others_race(local_conn, tmp_path):
    conn = local_conn()
    started = submit(conn["conn_id"], tmp_path, ["sh", "-c", "sleep 30"])
    trigger = SpotJobTrigger(
        spot_conn_id=conn["conn_id"],
        job_id=started,
        other_job_ids=["local-gone-racer"],
        job_state="PENDING",
        poll_interval=0.1,
    )
    # the racer is unknown to the backend (gone): news first
    assert first_event(trigger)["status"] == "changed"
    alone = SpotJobTrigger(
        spot_conn_id=conn["conn_id"],
        job_id=started,
        job_state="PENDING",
        poll_interval=0.1,
        wake_at=time.time() + 1.0,
    )
    # with no other job racing, a start is no news: the trigger waits (here until wake_at)
    assert first_event(alone)["status"] == "wake"


def test_termination_trigger_yields_every_matching_notice_when_watching_a_queue(local_conn):
    conn = local_conn()
    events = conn["state_dir"] / EVENTS_FILE
    now = time.time()
    trigger = SpotTerminationTrigger(
        spot_conn_id=conn["conn_id"], job_queue="gpu-spot", since=now - 1, poll_interval=0.1
    )
    for job, queue in (("j1", "gpu-spot"), ("j2", "cpu-spot"), ("j3", "arn:aws:batch:q/gpu-spot")):
        append_event(events, {"event": "notice", "at": now, "job_id": job, "queue": queue})

    async def two():
        gen = trigger.run()
        return [(await anext(gen)).payload for _ in range(2)]

    got = asyncio.run(asyncio.wait_for(two(), 10))
    assert [(p["terminated"], p["kind"], p["job_id"]) for p in got] == [
        (True, "INTERRUPTION", "j1"),
        (True, "INTERRUPTION", "j3"),
    ]


def test_an_old_serialized_job_trigger_still_loads_and_has_no_ledger():
    old = {"spot_conn_id": "aws_spot", "job_id": "j-1", "poll_interval": 5.0, "wake_at": None}
    trigger = import_string("spot_workflows.airflow.triggers.SpotJobTrigger")(**old)
    assert (trigger.checkpoint_uri, trigger.step_key, trigger.watcher) == (None, None, None)
    assert trigger._record_stop() is None  # no ledger to write: on_kill cancels, as it did


def test_job_trigger_on_kill_records_a_stop_only_while_its_try_watches(local_conn, tmp_path):
    """on_kill of the watching try: STOPPED written ahead, then the job cancelled. on_kill of an
    older try (a newer one re-attached): the job and the ledger are left alone."""
    conn = local_conn()
    backend = build_backend(SpotBackendHook(spot_conn_id=conn["conn_id"]).get_info())
    uri = f"file://{tmp_path}/ckpt"
    ledger = Ledger.open(CheckpointStore(uri), "trig")
    attempt = ledger.begin(capacity=Capacity.SPOT, backend=backend.name, now=time.time())
    job_id = submit(conn["conn_id"], tmp_path, ["sleep", "60"])
    ledger.set_job_id(attempt, job_id)
    ledger.update(ledger.attempt(1), watcher="d/t/r/-1#try2")

    def trigger(watcher):
        return SpotJobTrigger(
            spot_conn_id=conn["conn_id"],
            job_id=job_id,
            checkpoint_uri=uri,
            step_key="trig",
            watcher=watcher,
        )

    asyncio.run(trigger("d/t/r/-1#try1").on_kill())  # an older try: not its job any more
    assert backend.describe([job_id])[job_id].state is not AttemptState.DONE
    assert ledger.refresh().attempt(1).stopping is None

    asyncio.run(trigger("d/t/r/-1#try2").on_kill())  # the watching try
    stored = ledger.refresh().attempt(1)
    assert stored.stopping is Outcome.STOPPED and "cleared or killed" in stored.reason
    deadline = time.time() + 20
    while backend.describe([job_id])[job_id].state is not AttemptState.DONE:
        assert time.time() < deadline, "the job was not cancelled"
        time.sleep(0.2)
