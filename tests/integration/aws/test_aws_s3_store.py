"""CheckpointStore on s3:// (s3fs) against a moto S3 server: the same contract as on disk."""

from __future__ import annotations

import hashlib
import os

import pytest

from spot_workflows.runtime.store.checkpoint_store import CheckpointStore, CheckpointWarning


@pytest.fixture
def s3(moto):
    moto.client("s3").create_bucket(Bucket="ckpt")
    return moto.client("s3")


def store_at(moto, key: str = "step", **kw) -> CheckpointStore:
    return CheckpointStore(f"s3://ckpt/{key}", storage_options=moto.s3_options, **kw)


def test_save_latest_read_round_trip(moto, s3):
    store = store_at(moto)
    assert store.latest() is None
    store.save(1, {"model.pt": b"a" * 1000}, progress=0.1)
    m = store.save(2, {"model.pt": b"b" * 2000, "opt/state.bin": b"c" * 10}, progress=0.2)
    latest = store.latest()
    assert latest.step == 2 and latest.progress == 0.2
    assert store.read_file(latest, "model.pt") == b"b" * 2000
    assert store.read_file(latest, "opt/state.bin") == b"c" * 10
    assert {f.name for f in m.files} == {"model.pt", "opt/state.bin"}
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="ckpt")["Contents"]}
    assert {"step/latest.json", "step/step-2/manifest.json", "step/step-2/model.pt"} <= keys
    store.write_atomic("ledger.json", b"{}")
    assert store.read("ledger.json") == b"{}" and store.read("missing.json") is None


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(moto, s3):
    store = store_at(moto)
    store.save(1, {"model.pt": b"one" * 100})
    store.save(2, {"model.pt": b"two" * 100})
    s3.put_object(Bucket="ckpt", Key="step/step-2/model.pt", Body=b"tw")  # truncated upload
    with pytest.warns(CheckpointWarning, match="step-2/model.pt"):
        latest = store.latest()
    assert latest.step == 1 and store.read_file(latest, "model.pt") == b"one" * 100

    s3.put_object(Bucket="ckpt", Key="step/step-1/manifest.json", Body=b"{not json")
    with pytest.warns(CheckpointWarning):
        assert store.latest() is None


def test_a_save_without_manifest_is_invisible(moto, s3):
    store = store_at(moto)
    store.save(1, {"model.pt": b"x"})
    s3.put_object(Bucket="ckpt", Key="step/step-2/model.pt", Body=b"half-written")
    assert store.latest().step == 1


def test_large_files_go_up_in_multipart_uploads(moto, s3, tmp_path):
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    store = CheckpointStore(
        "s3://ckpt/big",
        storage_options={**moto.s3_options, "default_block_size": 5 * 1024 * 1024},
    )
    manifest = store.save(3, {"weights.bin": big})
    [f] = manifest.files
    assert f.size == 12 * 1024 * 1024
    assert f.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    head = s3.head_object(Bucket="ckpt", Key="big/step-3/weights.bin")
    assert head["ContentLength"] == f.size
    assert int(head["ETag"].strip('"').split("-")[1]) >= 2  # multipart: "<md5>-<parts>"
    assert store.read_file(store.latest(), "weights.bin") == big.read_bytes()
