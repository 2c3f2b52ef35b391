"""Store faults (issue 11, item 3): throttling and errors injected into the storage layer under
a real CheckpointStore, on memory://, on s3:// (s3fs against a moto server) and on gs:// (gcsfs
against gcp-storage-emulator).

What must hold: a transient error (S3 SlowDown/500, GCS 429/503, a connection reset) is retried
with capped, jittered backoff and the save succeeds; a save whose retries run out raises a
CheckpointError that says what happened, within a bounded wait, and the previous checkpoint
stays the newest valid one, byte for byte; permanent errors (access denied) are not retried.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
from collections.abc import Iterator

import pytest
from faulty_fs import (
    TRANSIENT,
    Faults,
    FaultyFS,
    access_denied,
    connection_reset,
    gcs_throttled,
    gcs_unavailable,
    s3_internal,
    s3_slowdown,
)

from spot_workflows.errors import CheckpointError
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.retry import RetryPolicy, is_transient

SAVES = int(os.environ.get("SPOT_RELIABILITY_SAVES", "200"))
STATS: dict[str, int] = {}


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def faulty(store: CheckpointStore, **kw) -> tuple[CheckpointStore, Faults, Sleeps]:
    """``store`` with its filesystem behind a failing layer and a recording, instant sleep."""
    faults, sleeps = Faults(**kw), Sleeps()
    store.fs = FaultyFS(store.fs, faults)
    store.retry = RetryPolicy(attempts=5, base_s=0.2, max_s=2.0, sleep=sleeps)
    return store, faults, sleeps


def mem_store() -> CheckpointStore:
    return CheckpointStore(f"memory://faults/{secrets.token_hex(6)}", keep_last=3)


def assert_intact(store: CheckpointStore, step: int, payload: bytes) -> None:
    """A clean reader (no faults) sees ``step`` as the newest valid checkpoint, verified."""
    clean = CheckpointStore(store.uri, storage_options=getattr(store, "_opts", None))
    clean.fs = getattr(store.fs, "inner", store.fs)
    latest = clean.latest()
    assert latest is not None and latest.step == step
    assert clean.read_file(latest, "model.bin") == payload


# -- the retry policy itself ------------------------------------------------------------------


def test_classification_of_storage_errors():
    for make in TRANSIENT:
        assert is_transient(make()), make
    assert not is_transient(access_denied())
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(OSError(28, "No space left on device"))


def test_backoff_is_capped_jittered_and_bounded():
    policy = RetryPolicy(attempts=6, base_s=0.2, max_s=2.0, rng=random.Random(1))
    assert policy.max_total_s == pytest.approx(0.2 + 0.4 + 0.8 + 1.6 + 2.0)
    for retry in range(20):
        assert 0 <= policy.delay(retry) <= min(2.0, 0.2 * 2**retry)
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


# -- memory:// ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", TRANSIENT, ids=lambda f: f.__name__)
@pytest.mark.parametrize("target", ["model.bin", "manifest.json", "latest.json"])
def test_transient_errors_are_retried_and_the_save_succeeds(make, target, caplog):
    store, faults, sleeps = faulty(mem_store())
    store.save(1, {"model.bin": b"one"})
    faults.add(
        "write", rf"step-2/{target}$" if target != "latest.json" else "latest.json$", make, 3
    )
    with caplog.at_level(logging.WARNING, "spot_workflows.checkpoint"):
        m = store.save(2, {"model.bin": b"two"}, progress=0.5)
    assert m.step == 2 and faults.injected == 3 and len(sleeps) == 3
    assert sum("transient storage error" in r.message for r in caplog.records) == 3
    assert all(s <= 2.0 for s in sleeps)
    assert_intact(store, 2, b"two")
    STATS["retries_observed"] = STATS.get("retries_observed", 0) + len(sleeps)


def test_reads_are_retried_too():
    store, faults, sleeps = faulty(mem_store())
    store.save(1, {"model.bin": b"one"})
    faults.add("read", r"step-1/model.bin$", s3_slowdown, 2)
    assert store.read_file(store.latest(), "model.bin") == b"one"
    assert len(sleeps) == 2


@pytest.mark.parametrize("target", ["model.bin", "manifest.json"])
def test_a_save_that_finally_fails_is_reported_and_the_previous_checkpoint_stays(target):
    store, faults, sleeps = faulty(mem_store())
    store.save(1, {"model.bin": b"one" * 100}, progress=0.1)
    faults.add("write", rf"step-2/{target}$", s3_slowdown, times=None)
    with pytest.raises(CheckpointError, match=r"step-2.*5 tries.*SlowDown|step 2.*5 tries"):
        store.save(2, {"model.bin": b"two" * 100}, progress=0.2)
    assert faults.count("write", rf"step-2/{target}$") == 5  # bounded: exactly `attempts` tries
    assert len(sleeps) == 4 and sum(sleeps) <= store.retry.max_total_s
    assert_intact(store, 1, b"one" * 100)
    faults.rules.clear()  # the store comes back: the next save works and becomes the newest
    store.save(2, {"model.bin": b"two"})
    assert_intact(store, 2, b"two")


def test_a_failed_resave_of_the_same_step_keeps_the_old_version():
    store, faults, _ = faulty(mem_store())
    store.save(4, {"model.bin": b"first"})
    faults.add("write", r"step-4/\.v-[0-9a-f]+/model.bin$", gcs_unavailable, times=None)
    with pytest.raises(CheckpointError, match="HttpError"):
        store.save(4, {"model.bin": b"second"})
    assert_intact(store, 4, b"first")


def test_permanent_errors_are_not_retried():
    store, faults, sleeps = faulty(mem_store())
    store.save(1, {"model.bin": b"one"})
    faults.add("write", r"step-2/model.bin$", access_denied, times=None)
    with pytest.raises(CheckpointError, match="PermissionError.*AccessDenied"):
        store.save(2, {"model.bin": b"two"})
    assert faults.injected == 1 and sleeps == []
    assert_intact(store, 1, b"one")


def test_only_latest_json_failing_still_saves_the_checkpoint(caplog):
    store, faults, _ = faulty(mem_store())
    faults.add("write", r"latest.json$", s3_internal, times=None)
    with caplog.at_level(logging.WARNING, "spot_workflows.checkpoint"):
        assert store.save(3, {"model.bin": b"three"}).step == 3
    assert any("checkpoint step 3 saved, but" in r.message for r in caplog.records)
    assert_intact(store, 3, b"three")


def test_emergency_save_that_fails_writes_a_report(tmp_path):
    store, faults, _ = faulty(mem_store())
    ck = Checkpointer(store, handle_signals=False)
    ck.save(1, {"model.bin": b"one"})
    faults.add("write", r"step-2/", connection_reset, times=None)
    report = ck.emergency_save(2, {"model.bin": b"two"})
    assert not report.ok and "ConnectionResetError" in (report.error or "")
    assert b"ConnectionResetError" in (store.read("emergency-2.json") or b"")
    assert_intact(store, 1, b"one")


def test_seeded_fault_campaign_never_loses_the_last_good_checkpoint():
    """SAVES saves, each object upload/read failing at random (30%) with a transient error."""
    store, faults, sleeps = faulty(mem_store(), rate=0.3, rng=random.Random(11))
    good: tuple[int, bytes] | None = None
    failed = 0
    for step in range(1, SAVES + 1):
        payload = random.Random(step).randbytes(64)
        try:
            store.save(step, {"model.bin": payload}, progress=step / SAVES)
            good = (step, payload)
        except CheckpointError:
            failed += 1
        if good is not None:
            assert_intact(store, *good)
    STATS.update(campaign_saves=SAVES, campaign_faults=faults.injected, campaign_failed=failed)
    STATS["campaign_retries"] = len(sleeps)
    assert faults.injected > SAVES // 2 and len(sleeps) > 0
    assert failed <= SAVES // 50  # 0.3**5 per object: retries absorb nearly every fault
    print(f"\nstore fault campaign: {STATS}")


# -- s3:// on moto and gs:// on the GCS emulator -----------------------------------------------


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict]:
    from moto_lab import moto_server

    with moto_server() as moto:
        moto.client("s3").create_bucket(Bucket="faults")
        yield moto.s3_options


@pytest.fixture(scope="module")
def gcs_options() -> Iterator[dict]:
    import fsspec
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="faults")
    server.start()
    port = server._api._httpd.server_address[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        for proto in ("gs", "gcs"):  # the core filesystem (the emulator speaks JSON/HTTP only)
            fsspec.register_implementation(proto, "gcsfs.core.GCSFileSystem", clobber=True)
        try:
            yield {"token": "anon", "endpoint_url": f"http://127.0.0.1:{port}"}
        finally:
            server.stop()


@pytest.fixture(params=["s3", "gcs"])
def cloud_store(request) -> CheckpointStore:
    opts = request.getfixturevalue(f"{request.param}_options")
    scheme = {"s3": "s3", "gcs": "gs"}[request.param]
    store = CheckpointStore(f"{scheme}://faults/{secrets.token_hex(4)}", storage_options=opts)
    store._opts = opts
    return store


def test_cloud_store_retries_throttling_and_survives_a_dead_store(cloud_store):
    store, faults, sleeps = faulty(cloud_store)
    throttle = s3_slowdown if store.uri.startswith("s3") else gcs_throttled
    store.save(1, {"model.bin": b"one" * 1000}, progress=0.1)
    faults.add("write", r"step-2/model.bin$", throttle, 4)  # 4 failures, 5th try succeeds
    faults.add("write", r"step-2/manifest.json$", throttle, 2)
    store.save(2, {"model.bin": b"two" * 1000}, progress=0.2)
    assert faults.injected == 6 and len(sleeps) == 6
    assert_intact(store, 2, b"two" * 1000)

    faults.add("write", r"step-3/", throttle, times=None)  # the store stays down
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        store.save(3, {"model.bin": b"three"}, progress=0.3)
    assert faults.count("write", r"step-3/model.bin$") == 5
    assert_intact(store, 2, b"two" * 1000)
    STATS["cloud_retries"] = STATS.get("cloud_retries", 0) + len(sleeps)


def test_gcsfs_http_errors_are_translated_not_leaked(gcs_options):
    """gcsfs raises HttpError (not an OSError) once its own retries are spent: the store must
    turn it into a CheckpointError, not let a raw SDK exception out."""
    store = CheckpointStore(f"gs://faults/{secrets.token_hex(4)}", storage_options=gcs_options)
    store, faults, _ = faulty(store)
    store.retry = RetryPolicy(attempts=2, base_s=0.0, max_s=0.0, sleep=lambda s: None)
    faults.add("write", r"model.bin$", gcs_unavailable, times=None)
    with pytest.raises(CheckpointError, match="HttpError.*Backend Error"):
        store.save(1, {"model.bin": b"x"})
    faults.add("read", r"ledger.json$", gcs_unavailable, times=None)
    with pytest.raises(CheckpointError, match="could not read"):
        store.read("ledger.json")


# -- the async checkpointer's uploads go through the same retry policy ---------------------------


def test_async_uploads_retry_transient_errors_and_a_dead_store_keeps_the_previous_checkpoint():
    from spot_workflows.runtime.checkpoint.async_checkpoint import load_state
    from spot_workflows.runtime.checkpoint.async_writer import AsyncCheckpointWriter

    store, faults, sleeps = faulty(mem_store())
    writer = AsyncCheckpointWriter(store)
    try:
        writer.save(1, {"w": b"one" * 1000}, progress=0.1).result()
        faults.add("write", r"step-2/.*state-000\.bin$", s3_slowdown, 3)
        writer.save(2, {"w": b"two" * 1000}, progress=0.2).result()
        assert faults.injected == 3 and len(sleeps) == 3  # three throttles absorbed
        assert load_state(store, store.latest())["w"] == b"two" * 1000

        faults.add("write", r"step-3/.*state-000\.bin$", gcs_unavailable, times=None)
        with pytest.raises(CheckpointError):
            writer.save(3, {"w": b"three" * 1000}, progress=0.3).result()
        assert faults.count("write", r"step-3/.*state-000\.bin$") == store.retry.attempts
    finally:
        writer.close()
    clean = CheckpointStore(store.uri)
    clean.fs = store.fs.inner
    latest = clean.latest()
    assert latest is not None and latest.step == 2
    assert load_state(clean, latest)["w"] == b"two" * 1000
