"""The async checkpointer on gs:// (gcp-storage-emulator): a parallel composite upload."""

from __future__ import annotations

import secrets

import pytest

from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

np = pytest.importorskip("numpy")


def test_a_large_shard_is_composed_from_parallel_parts_and_restores_exactly(gcs):
    store = CheckpointStore(f"gs://spot-ckpt/async-{secrets.token_hex(4)}", storage_options=gcs)
    ckpt = AsyncCheckpointer(Checkpointer(store, handle_signals=False))
    ckpt.writer.part_bytes = 4 * 1024 * 1024  # 12 MiB -> 3 parts, composed into one object
    state = {"w": np.random.default_rng(1).standard_normal(12 * 1024 * 1024 // 8)}
    result = ckpt.save(3, state).result()
    names = sorted(p.rsplit("/", 1)[-1] for p in store.fs.find(store.root))
    assert names == ["latest.json", "manifest.json", "state-000.bin", "state-index.json"]
    [shard] = [f for f in result.manifest.files if f.name == "state-000.bin"]
    assert store.fs.size(f"{store.root}/step-3/state-000.bin") == shard.size
    restored = ckpt.restore()
    assert restored.step == 3 and restored.state["w"].tobytes() == state["w"].tobytes()
