"""CheckpointStore on gs:// (gcsfs) against gcp-storage-emulator, plus the ledger next to it."""

from __future__ import annotations

import secrets
import time

import pytest

from spot_workflows.core.outcomes import Capacity
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore, CheckpointWarning


@pytest.fixture
def store(gcs) -> CheckpointStore:
    store = CheckpointStore(f"gs://spot-ckpt/t/{secrets.token_hex(4)}", storage_options=gcs)
    store._opts = gcs  # for a second client on the same emulator
    return store


def test_save_latest_and_read_back(store):
    assert store.latest() is None
    store.save(1, {"model.bin": b"one", "optim/state.bin": b"x" * 5000}, progress=0.1)
    store.save(2, {"model.bin": b"two"}, progress=0.2, metadata={"epoch": 2})
    latest = store.latest()
    assert (latest.step, latest.progress, latest.metadata) == (2, 0.2, {"epoch": 2})
    assert store.read_file(latest, "model.bin") == b"two"
    first = CheckpointStore(store.uri, storage_options=store._opts)._load_manifest(1)
    assert store.read_file(first, "optim/state.bin") == b"x" * 5000


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(store):
    store.save(1, {"model.bin": b"good"})
    store.save(2, {"model.bin": b"newer"})
    store.fs.pipe_file(store._path("step-2/model.bin"), b"torn")  # a damaged object
    with pytest.warns(CheckpointWarning, match="step-2/model.bin"):
        latest = store.latest()
    assert latest.step == 1 and store.read_file(latest, "model.bin") == b"good"


def test_incomplete_save_is_invisible_and_old_steps_are_pruned(store):
    for step in (1, 2, 3, 4):
        store.save(step, {"model.bin": f"s{step}".encode()})
    store.fs.pipe_file(store._path("step-5/model.bin"), b"half written, no manifest")
    assert store.latest().step == 4
    assert store.steps() == [2, 3, 4]  # keep_last=3


def test_resave_of_a_step_replaces_it_atomically(store):
    store.save(7, {"model.bin": b"first"})
    store.save(7, {"model.bin": b"second"})
    assert store.read_file(store.latest(), "model.bin") == b"second"


def test_ledger_round_trips_on_gcs(store):
    ledger = Ledger.open(store, "gcs-step")
    attempt = ledger.begin(capacity=Capacity.SPOT, backend="gcp-batch", now=time.time())
    ledger.set_job_id(attempt, "projects/p/locations/r/jobs/x")
    again = Ledger.open(CheckpointStore(store.uri, storage_options=store._opts), "gcs-step")
    assert again.live is not None and again.live.job_id == "projects/p/locations/r/jobs/x"
