"""CheckpointStore on real files (file://) and fsspec's in-memory filesystem (memory://)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from spot_workflows.errors import CheckpointError, ConfigError, CorruptCheckpointError
from spot_workflows.runtime.store.checkpoint_store import (
    CheckpointStore,
    CheckpointWarning,
    Manifest,
)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"file://{tmp_path}/ckpt", keep_last=3)


@pytest.fixture(params=["file", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "file":
        return CheckpointStore(f"file://{tmp_path}/ckpt", keep_last=2)
    return CheckpointStore(f"memory://spot-tests/{uuid.uuid4().hex}", keep_last=2)


def test_round_trip_records_sizes_and_checksums(any_store: CheckpointStore) -> None:
    files = {"model.bin": os.urandom(1000), "optim/state.bin": b"adam", "empty": b""}
    saved = any_store.save(7, files, progress=0.25, metadata={"loss": 1.5})
    latest = any_store.latest()
    assert latest == saved
    assert latest.step == 7 and latest.progress == 0.25 and latest.metadata == {"loss": 1.5}
    recorded = {f.name: (f.size, f.sha256) for f in latest.files}
    assert recorded == {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in files.items()}
    for name, data in files.items():
        assert any_store.read_file(latest, name) == data
    assert any_store.steps() == [7]
    assert Manifest.model_validate_json(any_store.read("latest.json")) == saved


def test_empty_store_has_no_latest(store: CheckpointStore) -> None:
    assert store.latest() is None
    assert store.steps() == []
    assert store.read("ledger.json") is None


def test_layout_on_disk(store: CheckpointStore, tmp_path: Path) -> None:
    store.save(3, {"a/b.bin": b"xyz"})
    root = tmp_path / "ckpt"
    assert (root / "step-3" / "a" / "b.bin").read_bytes() == b"xyz"
    on_disk = json.loads((root / "step-3" / "manifest.json").read_text())
    assert on_disk["step"] == 3 and on_disk["format"] == 1
    assert json.loads((root / "latest.json").read_text()) == on_disk
    assert sorted(p.name for p in root.rglob("*")) == [
        "a",
        "b.bin",
        "latest.json",
        "manifest.json",
        "step-3",
    ]


def test_path_values_are_streamed_and_directories_expanded(
    store: CheckpointStore, tmp_path: Path
) -> None:
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024 + 17))  # more than two copy chunks
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "0.bin").write_bytes(b"zero")
    (shards / "sub" / "1.bin").write_bytes(b"one")
    m = store.save(1, {"weights.bin": big, "shards": shards})
    assert {f.name for f in m.files} == {"weights.bin", "shards/0.bin", "shards/sub/1.bin"}
    assert m.file("weights.bin").sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    out = store.restore_to(m, tmp_path / "restored")
    assert (out / "weights.bin").read_bytes() == big.read_bytes()
    assert (out / "shards" / "sub" / "1.bin").read_bytes() == b"one"


def test_keep_last_prunes_older_steps(any_store: CheckpointStore) -> None:
    for step in (10, 20, 30, 40):
        any_store.save(step, {"w": str(step).encode()})
    assert any_store.steps() == [30, 40]
    assert any_store.read("step-10/w") is None and any_store.read("step-20/manifest.json") is None
    assert any_store.read_file(any_store.latest(), "w") == b"40"


def test_other_objects_survive_pruning(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/c", keep_last=1)
    store.write_atomic("ledger.json", b'{"attempts": []}')
    store.save(1, {"w": b"1"})
    store.save(2, {"w": b"2"})
    assert store.steps() == [2]
    assert store.read("ledger.json") == b'{"attempts": []}'


@pytest.mark.parametrize(
    "name",
    ["../evil", "a/../../b", "/etc/passwd", "a\\b", "", "a//b", "./a", "C:x", "manifest.json"],
)
def test_escaping_or_reserved_names_rejected(store: CheckpointStore, name: str) -> None:
    with pytest.raises(ConfigError):
        store.save(1, {name: b"x"})
    assert store.latest() is None


def test_bad_arguments_rejected(store: CheckpointStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="progress"):
        store.save(1, {"a": b""}, progress=1.5)
    with pytest.raises(ConfigError, match="step"):
        store.save(-1, {"a": b""})
    with pytest.raises(ConfigError, match="bytes or a pathlib.Path"):
        store.save(1, {"a": "not bytes"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="does not exist"):
        store.save(1, {"a": tmp_path / "missing"})
    with pytest.raises(ConfigError, match="JSON"):
        store.save(1, {"a": b""}, metadata={"x": object()})
    with pytest.raises(ConfigError, match="keep_last"):
        CheckpointStore(f"file://{tmp_path}/x", keep_last=0)
    with pytest.raises(ConfigError, match="must start with"):
        CheckpointStore(str(tmp_path))
    with pytest.raises(ConfigError):
        store.write_atomic("../ledger.json", b"{}")


def test_saving_an_older_step_than_the_newest_is_refused(store: CheckpointStore) -> None:
    store.save(5, {"w": b"5"})
    with pytest.raises(CheckpointError, match="newer checkpoint"):
        store.save(4, {"w": b"4"})
    assert store.latest().step == 5


def test_resaving_a_step_replaces_it(any_store: CheckpointStore) -> None:
    any_store.save(1, {"w": b"first"})
    any_store.save(2, {"w": b"two", "sub/extra": b"e"})
    for attempt in range(3):
        any_store.save(2, {"w": b"TWO!" * attempt}, progress=0.5)
        latest = any_store.latest()
        assert latest.step == 2 and latest.progress == 0.5
        assert [f.name for f in latest.files] == ["w"]
        assert any_store.read_file(latest, "w") == b"TWO!" * attempt
    step_dir = f"{any_store.root}/step-2"
    left = sorted(p[len(step_dir) + 1 :] for p in any_store.fs.find(step_dir))
    assert left == sorted(["manifest.json", f"{latest.subdir}/w"])  # old versions tidied
    assert any_store.steps() == [1, 2]


@pytest.mark.parametrize("resave", [False, True], ids=["new-step", "same-step"])
def test_a_save_in_progress_is_invisible(
    any_store: CheckpointStore, tmp_path: Path, resave: bool
) -> None:
    """Block a save half-way (its data comes from a pipe) and look at the store meanwhile."""
    any_store.save(1, {"w": b"one"})
    any_store.save(2, {"w": b"two", "x": b"x2"})
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    step = 2 if resave else 3
    saver = threading.Thread(target=any_store.save, args=(step, {"w": b"new" * 10, "x": fifo}))
    saver.start()
    with open(fifo, "wb") as pipe:
        pipe.write(b"first half ")
        pipe.flush()
        time.sleep(0.05)  # the saver has written "w" and part of "x"
        during = any_store.latest()
        assert during.step == 2 and any_store.read_file(during, "w") == b"two"
        assert any_store.read_file(during, "x") == b"x2"
        pipe.write(b"second half")
    saver.join(timeout=5)
    after = any_store.latest()
    assert after.step == step and any_store.read_file(after, "x") == b"first half second half"


def test_corrupt_latest_json_warns_and_falls_back(
    store: CheckpointStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save(1, {"w": b"one"})
    store.save(2, {"w": b"two"})
    root = tmp_path / "ckpt"
    (root / "latest.json").write_text('{"step": 2, "files": [')  # torn write
    with pytest.warns(CheckpointWarning, match="latest.json"):
        assert store.latest().step == 2  # step-2/manifest.json is authoritative
    (root / "step-2" / "manifest.json").write_text("not json")
    with (
        caplog.at_level(logging.WARNING, logger="spot_workflows.checkpoint"),
        pytest.warns(CheckpointWarning) as seen,
    ):
        latest = store.latest()
    assert latest.step == 1 and store.read_file(latest, "w") == b"one"
    messages = [str(w.message) for w in seen]
    assert any("ckpt/latest.json" in m for m in messages)
    assert any("ckpt/step-2/manifest.json" in m for m in messages)
    assert "step-2/manifest.json" in caplog.text


def test_schema_error_in_manifest_is_corruption(store: CheckpointStore, tmp_path: Path) -> None:
    store.save(1, {"w": b"one"})
    store.save(2, {"w": b"two"})
    path = tmp_path / "ckpt" / "step-2" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["files"][0]["name"] = "../escape"
    path.write_text(json.dumps(doc))
    with pytest.warns(CheckpointWarning, match="step-2/manifest.json"):
        assert store.latest().step == 1


def test_truncated_data_file_is_skipped_by_latest(store: CheckpointStore, tmp_path: Path) -> None:
    store.save(1, {"w": b"one"})
    store.save(2, {"w": b"two-two"})
    (tmp_path / "ckpt" / "step-2" / "w").write_bytes(b"tw")
    with pytest.warns(CheckpointWarning, match="step-2/w"):
        assert store.latest().step == 1


def test_flipped_bytes_raise_on_read(store: CheckpointStore, tmp_path: Path) -> None:
    m = store.save(1, {"w": b"hello world"})
    path = tmp_path / "ckpt" / "step-1" / "w"
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.latest() == m  # same size: latest() only checks sizes
    with pytest.raises(CorruptCheckpointError, match="step-1/w"):
        store.read_file(m, "w")
    with pytest.raises(CorruptCheckpointError):
        store.restore_to(m, tmp_path / "out")
    assert not (tmp_path / "out" / "w").exists()
    with pytest.raises(CheckpointError, match="no file 'nope'"):
        store.read_file(m, "nope")


def test_step_dir_without_manifest_is_ignored_silently(
    store: CheckpointStore, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    store.save(1, {"w": b"one"})
    torn = tmp_path / "ckpt" / "step-2"
    torn.mkdir()
    (torn / "w").write_bytes(b"half")
    assert store.latest().step == 1
    assert store.steps() == [1]
    assert not [w for w in recwarn if issubclass(w.category, CheckpointWarning)]
    store.save(2, {"w": b"two"})  # a later save of that step replaces the leftovers
    assert store.read_file(store.latest(), "w") == b"two"


def test_write_atomic_and_read(store: CheckpointStore, tmp_path: Path) -> None:
    store.write_atomic("ledger.json", b"v1")
    store.write_atomic("ledger.json", b"v2")
    assert store.read("ledger.json") == b"v2"
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["ledger.json"]
