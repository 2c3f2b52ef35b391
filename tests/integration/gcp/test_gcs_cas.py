"""Compare-and-swap writes (runtime/store/cas.py) on gs:// against gcp-storage-emulator.

gcp-storage-emulator ignores ``ifGenerationMatch`` on uploads and downloads and sends no
``x-goog-generation`` header, so against it every write is blind
(``test_the_plain_emulator_ignores_generation_preconditions`` pins that down). The ``strict``
fixture wraps the emulator's upload and download handlers to do what GCS does: a request whose
``ifGenerationMatch`` is not the object's generation (``0``: absent) gets 412, and downloads carry
``x-goog-generation`` (or, in the ``metadata`` variant, do not: our read then falls back to the
metadata's generation and a download pinned to it). The emulator serves one request at a time, so
check and write are one step, as in GCS. The wrapper records every upload's precondition: proof
that our requests carry it.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus

import pytest

from spot_workflows.errors import WriteConflictError
from spot_workflows.runtime.store.cas import Versioned, read_versioned, write_if
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

LEDGER = "ledger.json"


@dataclass
class Strict:
    header: bool  # downloads carry x-goog-generation
    uploads: list[tuple[str, str | None]] = field(default_factory=list)  # (name, precondition)
    pinned: int = 0  # downloads with ifGenerationMatch (the read's fallback without the header)
    refused: int = 0


def _first(query: dict, name: str) -> str | None:
    return (query.get(name) or [None])[0]


@pytest.fixture(params=["header", "metadata"])
def strict(gcs, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Strict:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    seen = Strict(header=request.param == "header")

    def generation(storage, bucket: str, name: str) -> str:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return "0"

    def refused(req, resp, storage, name: str) -> bool:
        want = _first(req.query, "ifGenerationMatch")
        if want is None or want == generation(storage, req.params["bucket_name"], name):
            return False
        seen.refused += 1
        resp.status = HTTPStatus.PRECONDITION_FAILED
        resp.json({"error": {"code": 412, "message": "conditionNotMet"}})
        return True

    def insert(req, resp, storage, *args, **kwargs):
        name = _first(req.query, "name")
        seen.uploads.append((name, _first(req.query, "ifGenerationMatch")))
        req.data  # noqa: B018  (read the body even when refusing)
        if name is None or not refused(req, resp, storage, name):
            objects.insert(req, resp, storage, *args, **kwargs)

    def download(req, resp, storage, *args, **kwargs):
        name = req.params["object_id"]
        seen.pinned += _first(req.query, "ifGenerationMatch") is not None
        if refused(req, resp, storage, name):
            return
        objects.download(req, resp, storage, *args, **kwargs)
        if seen.header and resp.status == HTTPStatus.OK:
            resp["x-goog-generation"] = generation(storage, req.params["bucket_name"], name)

    for _, handlers in server.HANDLERS:
        if handlers.get(server.POST) is objects.insert:
            monkeypatch.setitem(handlers, server.POST, insert)
        if handlers.get(server.GET) is objects.download:
            monkeypatch.setitem(handlers, server.GET, download)
    return seen


@pytest.fixture
def uri(gcs) -> str:
    return f"gs://spot-ckpt/cas/{secrets.token_hex(4)}"


@pytest.fixture
def store_at(gcs):
    def make(uri: str) -> CheckpointStore:
        """A store with its own gcsfs client, like another process."""
        return CheckpointStore(uri, storage_options={**gcs, "skip_instance_cache": True})

    return make


def test_the_plain_emulator_ignores_generation_preconditions(uri, store_at):
    store = store_at(uri)
    write_if(store, LEDGER, b"one", expected=None)
    write_if(store, LEDGER, b"two", expected=None)  # GCS would answer 412 here
    assert read_versioned(store, LEDGER).data == b"two"


def test_create_if_absent_succeeds_once(strict, uri, store_at):
    store = store_at(uri)
    assert read_versioned(store, LEDGER) == Versioned(None, None)
    version = write_if(store, LEDGER, b'{"a": 1}', expected=None)
    assert version == str(store.fs.info(store._path(LEDGER))["generation"])
    with pytest.raises(WriteConflictError, match=r"gs://spot-ckpt/cas/\w+/ledger\.json was chang"):
        write_if(store, LEDGER, b'{"b": 2}', expected=None)
    assert read_versioned(store, LEDGER) == Versioned(b'{"a": 1}', version)
    key = store._path(LEDGER).split("/", 1)[1]
    assert strict.uploads == [(key, "0"), (key, "0")] and strict.refused == 1
    assert strict.pinned == (0 if strict.header else 1)  # the read used the header if it came


def test_a_stale_generation_conflicts_and_leaves_the_object_unchanged(strict, uri, store_at):
    store, other = store_at(uri), store_at(uri)
    v1 = write_if(store, LEDGER, b"one", expected=None)
    v2 = write_if(other, LEDGER, b"two", expected=read_versioned(other, LEDGER).version)
    assert v2 != v1
    with pytest.raises(WriteConflictError, match=f"expected it at version {v1}"):
        write_if(store, LEDGER, b"three", expected=v1)
    assert read_versioned(store, LEDGER) == Versioned(b"two", v2)
    assert [g for _, g in strict.uploads] == ["0", v1, v1]
    store.fs.rm(store._path(LEDGER))
    with pytest.raises(WriteConflictError):  # deleted since read
        write_if(store, LEDGER, b"four", expected=v2)
    assert read_versioned(store, LEDGER) == Versioned(None, None)


def test_eight_writers_never_lose_an_increment(strict, uri, store_at):
    conflicts: list[int] = []
    won: list[int] = []  # the value each successful write stored
    start = threading.Barrier(8)

    def work() -> None:
        store, mine = store_at(uri), 0
        start.wait()
        for _ in range(25):
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
    assert json.loads(read_versioned(store_at(uri), "counter.json").data) == {"n": 200}
    assert sorted(won) == list(range(1, 201))  # no two writers both won from one state
    assert all(g is not None for _, g in strict.uploads)  # every write was conditional


@pytest.mark.parametrize("n", [2, 8])
def test_runners_of_one_step_at_once_create_one_gcp_batch_job_per_attempt(strict, gcs, batch, n):
    """Several runners of one step against GCP Batch (the in-process gRPC fake), ledger on GCS
    with generation preconditions enforced: one CreateJob for the one attempt, in the ledger."""
    from google.cloud import batch_v1

    from spot_workflows.backends.gcp_batch import GcpBatchBackend
    from spot_workflows.config import StepSpec
    from spot_workflows.core.outcomes import Outcome
    from spot_workflows.ledger import Ledger
    from spot_workflows.runner import StepRunner

    key = f"gcs-concurrent-{n}-{secrets.token_hex(3)}"
    spec = StepSpec(
        key=key, command=["python", "x.py"], image="img", checkpoint_uri=f"gs://spot-ckpt/{key}"
    )
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        runner = StepRunner(
            spec=spec,
            backend=GcpBatchBackend(project="proj", region="us-central1", client=batch.client()),
            store=CheckpointStore(spec.checkpoint_uri, storage_options=gcs),
            poll_interval=0.02,
        )
        barrier.wait(timeout=60)
        try:
            results[i] = runner.run()
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while batch.count("CreateJob") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # every runner has seen the job pending by now
    for name in list(batch.jobs):
        batch.set_state(name, batch_v1.JobStatus.State.SUCCEEDED)
    for t in threads:
        t.join(timeout=60)
    failed = {i: r for i, r in enumerate(results) if not getattr(r, "succeeded", False)}
    assert failed == {}, f"runners that did not succeed (None: still running): {failed}"
    assert batch.count("CreateJob") == 1, batch.count("CreateJob")  # what Batch received
    ledger = Ledger.open(CheckpointStore(spec.checkpoint_uri, storage_options=gcs), key)
    assert [(a.number, a.outcome, a.job_id) for a in ledger.attempts] == [
        (1, Outcome.SUCCEEDED, next(iter(batch.jobs)))
    ]
    assert all(pre is not None for _, pre in strict.uploads)  # every ledger write was a CAS
