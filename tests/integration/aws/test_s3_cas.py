"""Compare-and-swap writes (runtime/store/cas.py) on s3:// against a moto server.

moto 5.2 enforces ``PutObject``'s ``IfNoneMatch="*"`` and ``IfMatch`` (412 PreconditionFailed,
404 NoSuchKey when the object is gone), like S3 since 2024: the store itself refuses stale writes.
But moto checks the precondition and then stores the object without a lock, and its server runs
requests in threads: two writers with the same ``IfMatch`` can both succeed there (seen: 78 of
80 increments kept). Real S3 makes check and write one atomic step; the ``atomic_moto`` fixture
does the same for the in-process moto server, so the concurrency test exercises our code only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from spot_workflows.errors import WriteConflictError
from spot_workflows.runtime.store.cas import Versioned, read_versioned, write_if
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

LEDGER = "ledger.json"


@pytest.fixture
def s3(moto):
    moto.client("s3").create_bucket(Bucket="ckpt")
    return moto.client("s3")


def _serialized(real, lock: threading.Lock):
    def method(self):
        with lock:
            return real(self)

    return method


@pytest.fixture
def atomic_moto(moto) -> Iterator[None]:
    """Serialize moto's GetObject and PutObject (its server is in this process), as S3 does."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    with pytest.MonkeyPatch.context() as mp:
        for name in ("get_object", "put_object"):
            mp.setattr(S3Response, name, _serialized(getattr(S3Response, name), lock))
        yield


def store_at(moto, key: str = "step") -> CheckpointStore:
    return CheckpointStore(f"s3://ckpt/{key}", storage_options=moto.s3_options)


def test_create_if_absent_succeeds_once(moto, s3):
    store = store_at(moto)
    assert read_versioned(store, LEDGER) == Versioned(None, None)
    version = write_if(store, LEDGER, b'{"a": 1}', expected=None)
    head = s3.head_object(Bucket="ckpt", Key=f"step/{LEDGER}")
    assert version == head["ETag"]  # the version is S3's ETag
    with pytest.raises(WriteConflictError, match=r"s3://ckpt/step/ledger\.json was changed"):
        write_if(store, LEDGER, b'{"b": 2}', expected=None)
    assert read_versioned(store, LEDGER) == Versioned(b'{"a": 1}', version)


def test_a_stale_etag_conflicts_and_leaves_the_object_unchanged(moto, s3):
    store = store_at(moto)
    v1 = write_if(store, LEDGER, b"one", expected=None)
    other = store_at(moto)  # another process, its own client
    v2 = write_if(other, LEDGER, b"two", expected=read_versioned(other, LEDGER).version)
    with pytest.raises(WriteConflictError) as caught:
        write_if(store, LEDGER, b"three", expected=v1)
    assert caught.value.__cause__ is not None  # S3's refusal, kept for debugging
    assert s3.get_object(Bucket="ckpt", Key=f"step/{LEDGER}")["Body"].read() == b"two"
    assert read_versioned(store, LEDGER) == Versioned(b"two", v2)
    s3.delete_object(Bucket="ckpt", Key=f"step/{LEDGER}")
    with pytest.raises(WriteConflictError):  # deleted since read: 404 on IfMatch
        write_if(store, LEDGER, b"four", expected=v2)
    assert read_versioned(store, LEDGER) == Versioned(None, None)


def test_eight_writers_never_lose_an_increment(moto, s3, atomic_moto):
    conflicts: list[int] = []
    won: list[int] = []  # the value each successful write stored
    start = threading.Barrier(8)

    def work() -> None:
        store, mine = store_at(moto), 0  # one client per writer, like separate processes
        start.wait()
        for _ in range(10):
            while True:
                cur = read_versioned(store, "counter.json")
                n = json.loads(cur.data)["n"] if cur.data is not None else 0
                try:
                    write_if(store, "counter.json", json.dumps({"n": n + 1}).encode(),
                             expected=cur.version)  # fmt: skip
                    won.append(n + 1)
                    break
                except WriteConflictError:
                    mine += 1
        conflicts.append(mine)

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(conflicts) == 8 and sum(conflicts) > 0  # every writer finished; they did race
    body = s3.get_object(Bucket="ckpt", Key="step/counter.json")["Body"].read()
    assert json.loads(body) == {"n": 80}
    assert sorted(won) == list(range(1, 81))  # no two writers both won from one state
