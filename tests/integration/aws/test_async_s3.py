"""The async checkpointer on s3:// (moto server): shards go up as parallel multipart uploads."""

from __future__ import annotations

import pytest

from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

np = pytest.importorskip("numpy")


def test_a_large_shard_is_a_parallel_multipart_upload_and_restores_exactly(moto):
    s3 = moto.client("s3")
    s3.create_bucket(Bucket="ckpt")
    store = CheckpointStore("s3://ckpt/async", storage_options=moto.s3_options)
    ckpt = AsyncCheckpointer(Checkpointer(store, handle_signals=False), io_threads=2)
    ckpt.writer.part_bytes = 5 * 1024 * 1024  # S3's smallest part: 12 MiB -> 3 parts
    state = {"w": np.random.default_rng(0).standard_normal(12 * 1024 * 1024 // 8), "tag": b"x"}
    result = ckpt.save(7, state, progress=0.7).result()
    [shard] = [f for f in result.manifest.files if f.name == "state-000.bin"]
    head = s3.head_object(Bucket="ckpt", Key="async/step-7/state-000.bin")
    assert head["ContentLength"] == shard.size
    assert head["ETag"].strip('"').endswith("-3")  # multipart: "<md5>-<parts>"
    uploads = s3.list_multipart_uploads(Bucket="ckpt").get("Uploads", [])
    assert uploads == []  # completed, nothing left dangling
    restored = AsyncCheckpointer(
        Checkpointer(
            CheckpointStore(store.uri, storage_options=moto.s3_options), handle_signals=False
        )
    ).restore()
    assert restored.step == 7 and restored.progress == 0.7
    assert restored.state["w"].tobytes() == state["w"].tobytes() and restored.state["tag"] == b"x"
