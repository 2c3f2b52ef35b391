"""The async checkpoint path with numpy and bytes state (no torch): round trip, snapshot
isolation, the in-flight policy, checksums, crash safety and the emergency flush."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.errors import CheckpointError, ConfigError, CorruptCheckpointError
from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer, load_state
from spot_workflows.runtime.checkpoint.async_writer import AsyncCheckpointWriter
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.checkpoint.snapshot import INDEX, plan
from spot_workflows.runtime.checkpoint.state_tree import flatten, unflatten
from spot_workflows.runtime.store import bulk_io
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore, CheckpointWarning

np = pytest.importorskip("numpy", reason="numpy state needs numpy")
ROOT = Path(__file__).resolve().parents[2]


def make(tmp_path: Path, **kw) -> AsyncCheckpointer:
    store = CheckpointStore((tmp_path / "ckpt").as_uri())
    ckpt_kw = {k: kw.pop(k) for k in ("every_steps", "wall_clock") if k in kw}
    return AsyncCheckpointer(Checkpointer(store, handle_signals=False, **ckpt_kw), **kw)


def sample_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "weights": rng.standard_normal((64, 33)).astype(np.float32),
        "strided": rng.integers(0, 100, size=(10, 12))[:, ::3],  # not contiguous
        "half": rng.standard_normal(7).astype(np.float16),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4)),
        "blob": bytes(range(256)) * 3,
        "ints": {0: "zero", 7: (1, 2.5, None), (1, 2): [True]},
        "scalars": [float("inf"), float("nan"), -0.0, 2**70, np.int64(5), "$not-a-tag"],
        "$dollar": {"nested": bytearray(b"xyz")},
    }


def assert_same(a, b) -> None:
    assert type(a) is type(b) or (isinstance(a, bytes | bytearray) and isinstance(b, bytes))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    elif isinstance(a, bytearray):  # byte strings come back as bytes
        assert bytes(a) == b
    else:
        assert a == b and repr(a) == repr(b)


class Gate(threading.Event):
    only: str = "/"  # hold the writes whose path contains this


@pytest.fixture
def gate(monkeypatch):
    """Holds background shard writes until ``gate.set()`` (or until they are cancelled)."""
    opened = Gate()
    real = bulk_io.write_local

    def held(path, view, *, cancelled=lambda: False, **kw):
        while opened.only in path and not opened.wait(0.01):
            if cancelled():
                raise bulk_io.WriteCancelled("cancelled while held")
        return real(path, view, cancelled=cancelled, **kw)

    monkeypatch.setattr(bulk_io, "write_local", held)
    return opened


def test_a_state_comes_back_exactly(tmp_path):
    ckpt = make(tmp_path)
    state = sample_state()
    ticket = ckpt.save(3, state, progress=0.25, metadata={"loss": 1.5})
    result = ticket.result()
    assert result.step == 3 and result.nbytes % 4096 == 0 and not ticket.skipped
    restored = ckpt.restore()
    assert restored.step == 3 and restored.progress == 0.25
    assert restored.manifest.metadata["loss"] == 1.5
    assert restored.manifest.metadata["emergency"] is False
    assert_same(state, restored.state)
    # every file is a regular checkpoint file: size + checksum in the manifest, readable verified
    names = {f.name for f in restored.manifest.files}
    assert INDEX in names and "state-000.bin" in names
    for f in restored.manifest.files:
        assert len(ckpt.store.read_file(restored.manifest, f.name)) == f.size
    ckpt.close()


def test_the_snapshot_is_taken_when_save_returns(tmp_path, gate):
    ckpt = make(tmp_path)
    state = {"w": np.arange(1000, dtype=np.float64), "b": bytearray(b"before")}
    ticket = ckpt.save(1, state)
    assert not ticket.done()  # the write is held: training goes on meanwhile
    state["w"] += 1.0
    state["b"][:] = b"after!"
    gate.set()
    ticket.result()
    restored = ckpt.restore().state
    assert restored["w"].tolist() == list(range(1000)) and restored["b"] == b"before"


def test_large_states_are_split_into_shards_written_in_parallel(tmp_path):
    ckpt = make(tmp_path, shard_bytes=8192, io_threads=3)
    state = {f"t{i}": np.full(1500, i, dtype=np.int32) for i in range(7)}  # 6000 B each
    manifest = ckpt.save(1, state).result().manifest
    shards = sorted(f.name for f in manifest.files if f.name != INDEX)
    assert shards == [f"state-{i:03d}.bin" for i in range(7)]
    assert_same(state, ckpt.restore().state)


def test_layout_packs_leaves_and_pads_shards_to_4k():
    leaves = [b"a" * 10, b"b" * 100, b"c" * 5000]
    specs, shards = plan(leaves, shard_bytes=4096)
    assert [(s.shard, s.offset) for s in specs] == [(0, 0), (0, 64), (1, 0)]
    assert [(s.start, s.nbytes) for s in shards] == [(0, 4096), (4096, 8192)]


def test_tagged_skeleton_round_trips_and_pickles_only_on_request():
    tree = {"x": Fraction(1, 3), "t": (1, [2, {"$k": 3}])}
    skeleton, leaves = flatten(tree)
    json.dumps(skeleton)  # plain JSON
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        unflatten(skeleton, leaves)
    assert unflatten(skeleton, leaves, allow_pickle=True) == tree
    with pytest.raises(CheckpointError, match="cannot checkpoint a function"):
        flatten({"f": lambda: 1})


def test_skip_policy_returns_at_once_and_keeps_the_cadence_due(tmp_path, gate):
    ckpt = make(tmp_path, policy="skip", every_steps=1)
    first = ckpt.save(1, {"v": b"one"})
    built = []
    second = ckpt.save(2, lambda: built.append(1) or {"v": b"two"})
    assert second.skipped and second.done() and not first.done()
    assert built == []  # the state callable is not even called
    assert ckpt.should_save(2)  # still due: the next step tries again
    with pytest.raises(CheckpointError, match="skipped"):
        second.result()
    gate.set()
    assert ckpt.flush().step == 1
    ckpt.save(3, {"v": b"three"}).result()
    assert ckpt.restore().state == {"v": b"three"}


def test_wait_policy_blocks_until_the_write_in_flight_is_durable(tmp_path, gate):
    ckpt = make(tmp_path, policy="wait")
    first = ckpt.save(1, {"v": b"one"})
    seen = {}

    def second_save():
        seen["ticket"] = ckpt.save(2, {"v": b"two"})
        seen["first_done_at_return"] = first.done()

    t = threading.Thread(target=second_save)
    t.start()
    assert not first.done()
    gate.set()
    t.join()
    assert seen["first_done_at_return"] and not seen["ticket"].skipped
    assert seen["ticket"].result().step == 2 and ckpt.store.steps() == [1, 2]


@pytest.mark.parametrize("checksum", ["crc32c", "sha256"])
def test_a_corrupt_shard_is_detected_by_its_checksum(tmp_path, checksum):
    ckpt = make(tmp_path, checksum=checksum)
    ckpt.save(1, {"w": np.ones(100)}).result()
    ckpt.save(2, {"w": np.full(100, 2.0)}).result()
    manifest = json.loads((tmp_path / "ckpt" / "step-2" / "manifest.json").read_text())
    recorded = {f["name"]: set(f) - {"name", "size"} for f in manifest["files"]}
    assert recorded == {"state-000.bin": {checksum}, INDEX: {checksum}}  # one checksum, named
    shard = tmp_path / "ckpt" / "step-2" / "state-000.bin"
    data = bytearray(shard.read_bytes())
    data[17] ^= 0xFF  # same size: only the checksum can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=f"size/{checksum}"):
        ckpt.restore()
    shard.write_bytes(bytes(data[:100]))  # truncated: latest() falls back to step 1
    with pytest.warns(CheckpointWarning, match="state-000.bin"):
        restored = ckpt.restore()
    assert restored.step == 1 and restored.state["w"].tolist() == [1.0] * 100


CRASH_CHILD = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    from spot_workflows.runtime.store import bulk_io
    from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer
    from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    ckpt = AsyncCheckpointer(Checkpointer(CheckpointStore(sys.argv[1]), handle_signals=False),
                             direct_io=False)
    ckpt.save(1, {"w": np.full(300_000, 1.0)}).result()

    def half_then_hang(path, view, **kw):  # a real partial file on disk, then the kill
        with open(path, "wb") as f:
            f.write(view[: view.nbytes // 2])
        print("HALF", path, flush=True)
        threading.Event().wait()

    bulk_io.write_local = half_then_hang
    ckpt.save(2, {"w": np.full(300_000, 2.0)})
    threading.Event().wait()
    """
)


def test_a_kill_during_the_background_write_leaves_the_previous_checkpoint(tmp_path):
    uri = (tmp_path / "ckpt").as_uri()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, uri], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("HALF"), line
        partial = Path(line.split(maxsplit=1)[1].strip())
    finally:
        child.kill()  # SIGKILL: no handler, no cleanup
        child.wait()
    assert partial.exists() and partial.stat().st_size > 0  # the kill landed mid-write
    store = CheckpointStore(uri)
    latest = store.latest()
    assert latest.step == 1 and store.steps() == [1]
    assert load_state(store, latest)["w"].tolist() == [1.0] * 300_000


def test_emergency_save_flushes_the_newest_state_and_reports_the_deadline(tmp_path, gate):
    now = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    ckpt = make(tmp_path, wall_clock=lambda: now.timestamp())
    gate.only = "/step-1/"
    older = ckpt.save(1, {"v": b"old"})  # held in flight
    notice = TerminationNotice(
        kind=NoticeKind.INTERRUPTION, source="gcp", deadline=now + timedelta(seconds=30)
    )
    ckpt.checkpointer.request_stop(notice)
    report = ckpt.emergency_save(2, {"v": b"newest"}, progress=0.5)
    assert report.ok and report.met_deadline is True and report.error is None
    assert isinstance(older.error, bulk_io.WriteCancelled)  # superseded, never made visible
    restored = ckpt.restore()
    assert restored.step == 2 and restored.state == {"v": b"newest"}
    assert restored.manifest.metadata["emergency"] is True
    assert ckpt.store.steps() == [2]


def test_an_emergency_save_past_the_deadline_is_reported(tmp_path):
    now = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    ckpt = make(tmp_path, wall_clock=lambda: now.timestamp())
    ckpt.checkpointer.request_stop(
        TerminationNotice(
            kind=NoticeKind.INTERRUPTION, source="aws", deadline=now - timedelta(seconds=1)
        )
    )
    report = ckpt.emergency_save(4, {"v": b"late"})
    assert report.met_deadline is False and not report.ok
    assert json.loads(ckpt.store.read("emergency-4.json"))["met_deadline"] is False
    assert ckpt.restore().state == {"v": b"late"}  # late, but saved


def test_emergency_save_of_the_step_in_flight_just_waits_for_it(tmp_path, gate):
    ckpt = make(tmp_path)
    in_flight = ckpt.save(5, {"v": b"five"})
    gate.set()
    report = ckpt.emergency_save(5, lambda: pytest.fail("must not snapshot again"))
    assert report.ok and in_flight.result().step == 5


def test_cadence_counts_the_snapshot_and_its_stall(tmp_path):
    ckpt = make(tmp_path, every_steps=10)
    assert ckpt.maybe_save(5, {"v": b"x"}) is None
    ticket = ckpt.maybe_save(10, {"v": b"x"})
    assert ticket is not None and ckpt.checkpointer.last_save_seconds == ticket.stall_seconds
    assert not ckpt.should_save(15) and ckpt.should_save(20)
    ckpt.close()


def test_reserve_allocates_the_buffer_the_saves_then_reuse(tmp_path):
    ckpt = make(tmp_path)
    state = {"w": np.zeros(3_000_000), "b": b"x" * 100}
    size = ckpt.reserve(lambda: state)
    buffer = ckpt.writer.pool._buffer
    assert size >= 24_000_100 and buffer is not None
    ckpt.save(1, state).result()
    ckpt.save(2, state).result()
    assert ckpt.writer.pool._buffer is buffer  # no allocation in either save


def test_background_failures_surface_on_the_ticket(tmp_path):
    ckpt = make(tmp_path)
    ckpt.save(5, {"v": b"five"}).result()
    older = ckpt.save(3, {"v": b"three"})  # a newer checkpoint exists: refused in the background
    with pytest.raises(CheckpointError, match="newer checkpoint"):
        older.result()
    with pytest.raises(CheckpointError, match="newer checkpoint"):
        ckpt.flush()
    assert ckpt.restore().step == 5


def test_resaving_a_step_replaces_it_atomically(tmp_path):
    ckpt = make(tmp_path)
    ckpt.save(1, {"v": b"first"}).result()
    manifest = ckpt.save(1, {"v": b"second"}).result().manifest
    assert manifest.subdir is not None
    assert ckpt.restore().state == {"v": b"second"}
    ckpt.close()  # retention runs after the save is durable; close() waits for it
    leftovers = {p.name for p in (tmp_path / "ckpt" / "step-1").iterdir()}
    assert leftovers == {"manifest.json", manifest.subdir}


def test_restoring_a_checkpoint_of_plain_files_says_what_to_do(tmp_path):
    ckpt = make(tmp_path)
    ckpt.store.save(1, {"state.json": b"{}"})
    with pytest.raises(CheckpointError, match="not written by the async checkpointer"):
        ckpt.restore()


def test_bad_settings_are_refused(tmp_path):
    store = CheckpointStore((tmp_path / "c").as_uri())
    with pytest.raises(ConfigError, match="skip"):
        AsyncCheckpointWriter(store, policy="sometimes")
    with pytest.raises(ConfigError, match="io_threads"):
        AsyncCheckpointWriter(store, io_threads=0)
    with pytest.raises(ConfigError, match="sha256, crc32c"):
        AsyncCheckpointWriter(store, checksum="md5")
    with pytest.raises(ConfigError, match="step"):
        AsyncCheckpointWriter(store).save(-1, {})
    with pytest.raises(ConfigError, match="object"):
        AsyncCheckpointWriter(store).save(1, {"o": np.array([object()])})
