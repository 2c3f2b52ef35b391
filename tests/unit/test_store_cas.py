"""Compare-and-swap writes (runtime/store/cas.py) on file:// and memory://: no lost updates."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from fsspec.spec import AbstractFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from spot_workflows.errors import CheckpointError, ConfigError, WriteConflictError
from spot_workflows.runtime.store import cas as store_cas
from spot_workflows.runtime.store.cas import Versioned, read_versioned, write_if
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.retry import RetryPolicy

LEDGER = "ledger.json"
FAST_RETRY = RetryPolicy(attempts=3, sleep=lambda s: None)


def new_store(kind: str, tmp: Path | str) -> CheckpointStore:
    if kind == "file":
        return CheckpointStore(f"file://{tmp}/ckpt", retry=FAST_RETRY)
    return CheckpointStore(f"memory://cas-tests/{uuid.uuid4().hex}", retry=FAST_RETRY)


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    return new_store(request.param, tmp_path)


def bump(store: CheckpointStore, rel: str = "counter.json") -> int:
    """One read-modify-write increment of a JSON counter; returns how many conflicts it took."""
    conflicts = 0
    while True:
        cur = read_versioned(store, rel)
        n = json.loads(cur.data)["n"] if cur.data is not None else 0
        time.sleep(0)  # let other threads run between the read and the write
        try:
            write_if(store, rel, json.dumps({"n": n + 1}).encode(), expected=cur.version)
            return conflicts
        except WriteConflictError:
            conflicts += 1


def test_create_if_absent_succeeds_once(store: CheckpointStore) -> None:
    assert read_versioned(store, LEDGER) == Versioned(None, None)
    version = write_if(store, LEDGER, b'{"a": 1}', expected=None)
    assert read_versioned(store, LEDGER) == Versioned(b'{"a": 1}', version)
    with pytest.raises(WriteConflictError, match=r"ledger\.json was changed by another writer"):
        write_if(store, LEDGER, b'{"b": 2}', expected=None)
    assert read_versioned(store, LEDGER) == Versioned(b'{"a": 1}', version)


def test_a_stale_version_conflicts_and_leaves_the_object_unchanged(store: CheckpointStore) -> None:
    v1 = write_if(store, LEDGER, b"one", expected=None)
    v2 = write_if(store, LEDGER, b"two", expected=v1)
    assert v2 != v1
    with pytest.raises(WriteConflictError, match=f"expected it at version {v1}"):
        write_if(store, LEDGER, b"three", expected=v1)
    assert read_versioned(store, LEDGER) == Versioned(b"two", v2)
    v3 = write_if(store, LEDGER, b"three", expected=v2)  # the current version still works
    assert read_versioned(store, LEDGER) == Versioned(b"three", v3)


def test_an_object_deleted_since_read_conflicts(store: CheckpointStore) -> None:
    v1 = write_if(store, LEDGER, b"one", expected=None)
    store.fs.rm(store._path(LEDGER))
    with pytest.raises(WriteConflictError):
        write_if(store, LEDGER, b"two", expected=v1)
    assert read_versioned(store, LEDGER) == Versioned(None, None)


def test_writes_leave_no_temp_files_next_to_the_object(tmp_path: Path) -> None:
    store = new_store("file", tmp_path)
    v = write_if(store, "sub/ledger.json", b"x", expected=None)
    write_if(store, "sub/ledger.json", b"y", expected=v)
    names = sorted(p.name for p in (tmp_path / "ckpt" / "sub").iterdir())
    assert names == [".ledger.json.lock", "ledger.json"]


@pytest.fixture
def busy_switching():
    """Switch threads as often as CPython allows, so an unlocked compare-and-write is cut."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_threads_never_lose_an_increment(store: CheckpointStore, busy_switching) -> None:
    conflicts: list[int] = []
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        conflicts.append(sum(bump(store) for _ in range(25)))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(conflicts) == 8 and sum(conflicts) > 0  # every thread finished; they did race
    assert json.loads(read_versioned(store, "counter.json").data) == {"n": 200}


def _increment_in_a_process(uri: str, go: str, times: int, out) -> None:
    store = CheckpointStore(uri)
    while not Path(go).exists():
        time.sleep(0.001)
    out.put(sum(bump(store) for _ in range(times)))
    out.close()
    out.join_thread()  # the result is in the pipe
    # a forked copy of the test process: skip the parent's exit handlers (engines loaded by other
    # tests register some that fail in a fork), which would turn a clean run into exit code 1
    os._exit(0)


def test_processes_never_lose_an_increment(tmp_path: Path) -> None:
    # fork: 8 separate processes (own file descriptors, own flock) without 8 interpreter starts
    ctx = multiprocessing.get_context("fork")
    store, go, out = new_store("file", tmp_path), tmp_path / "go", ctx.Queue()
    procs = [
        ctx.Process(target=_increment_in_a_process, args=(store.uri, str(go), 25, out))
        for _ in range(8)
    ]
    for p in procs:
        p.start()
    go.touch()  # every worker starts together: maximal contention
    conflicts = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    assert [p.exitcode for p in procs] == [0] * 8
    assert json.loads(read_versioned(store, "counter.json").data) == {"n": 200}
    assert sum(conflicts) > 0  # the workers did race each other
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        ".counter.json.lock",
        "counter.json",
    ]


@pytest.mark.parametrize("kind", ["file", "memory"])
@settings(max_examples=60, deadline=None)
@given(schedule=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=30))
def test_interleaved_writers_behave_like_the_successful_writes_in_order(
    kind: str, schedule: list[tuple[int, bool]]
) -> None:
    """Writers read (False) or write (True) in a random order; each write appends a token to the
    list it last read (or its own last write). A write must succeed exactly when nothing changed
    since that read, and the object must always hold the successful writes' tokens in order."""
    with tempfile.TemporaryDirectory() as tmp:
        store = new_store(kind, tmp)
        seen: dict[int, Versioned] = {}  # each writer's view: what it read or wrote last
        applied: list[str] = []  # tokens of the successful writes, in order
        for seq, (writer, is_write) in enumerate(schedule):
            if not is_write:
                seen[writer] = read_versioned(store, LEDGER)
                continue
            base = seen.get(writer, Versioned(None, None))
            tokens = json.loads(base.data) if base.data is not None else []
            data = json.dumps([*tokens, f"w{writer}-{seq}"]).encode()
            current = read_versioned(store, LEDGER)
            try:
                version = write_if(store, LEDGER, data, expected=base.version)
            except WriteConflictError:
                assert base != current, "refused a write based on the current state"
                assert read_versioned(store, LEDGER) == current  # nothing written
                continue
            assert base == current, "accepted a write based on a stale state"
            applied.append(f"w{writer}-{seq}")
            seen[writer] = Versioned(data, version)
        final = read_versioned(store, LEDGER)
        assert (json.loads(final.data) if final.data is not None else []) == applied
        if kind == "memory" and store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)


def test_transient_errors_are_retried_but_conflicts_are_not(tmp_path: Path, monkeypatch) -> None:
    sleeps: list[float] = []
    store = CheckpointStore(
        f"file://{tmp_path}/ckpt", retry=RetryPolicy(attempts=3, sleep=sleeps.append)
    )
    real_replace, fails = store_cas.os.replace, [OSError(errno.EIO, "I/O error")]

    def flaky_replace(src, dst):
        if fails:
            raise fails.pop()
        real_replace(src, dst)

    monkeypatch.setattr(store_cas.os, "replace", flaky_replace)
    v = write_if(store, LEDGER, b"one", expected=None)
    assert len(sleeps) == 1 and read_versioned(store, LEDGER) == Versioned(b"one", v)
    with pytest.raises(WriteConflictError):
        write_if(store, LEDGER, b"two", expected=None)
    assert len(sleeps) == 1  # a conflict is final: the caller re-reads
    fails[:] = [OSError(errno.EIO, "I/O error")] * 3
    with pytest.raises(CheckpointError, match=r"could not write .*ledger\.json \(3 tries\)"):
        write_if(store, LEDGER, b"two", expected=v)
    assert read_versioned(store, LEDGER) == Versioned(b"one", v)
    assert [p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".spot-tmp")] == []


class _OtherFS(AbstractFileSystem):
    protocol = "ftp"


def test_an_unsupported_filesystem_is_a_config_error(tmp_path: Path) -> None:
    store = new_store("memory", tmp_path)
    store.fs = _OtherFS()
    with pytest.raises(ConfigError, match=r"file://, memory://, s3:// or gs://"):
        read_versioned(store, LEDGER)
    with pytest.raises(ConfigError, match=r"file://, memory://, s3:// or gs://"):
        write_if(store, LEDGER, b"x", expected=None)
    with pytest.raises(ConfigError, match="expected version must be a str"):
        write_if(new_store("memory", tmp_path), LEDGER, b"x", expected=3)  # type: ignore[arg-type]
