"""ShardLedger: which shards are committed, on a :class:`CheckpointStore` (file://, s3://, gs://).

Layout under the store root (next to the step's checkpoints)::

    shards/plan.json                  the plan (digest + shards); created once, checked by everyone
    shards/out/<id>/<token><suffix>   output objects: a fresh name per writer, never overwritten
    shards/done/<id>.json             the commit marker (DoneRecord: object, rows, bytes, sha256)
    shards/partial/<id>.json          in-shard checkpoint: rows done and the parts holding them
    shards/partial/<id>/<token>-<n>   those parts
    shards/failed/<id>/<n>.json       application errors; shards/dead/<id>.json once given up
    shards/claims/<id>/<gen>.json     dynamic claims (leases) of the store-claims work source
    step-<n>/manifest.json            progress checkpoints: n = shards committed, progress = fraction

**A shard is committed exactly once.** Its output is written under a name nobody else uses,
then the marker is created with an *exclusive* create (``ShardObjects.create_exclusive``:
``os.link`` on local disks, a conditional PUT on S3 / GCS). The loser deletes its own output.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spot_workflows.errors import CheckpointError, ConfigError, CorruptCheckpointError
from spot_workflows.runtime.shards.objects import TMP_PREFIX, ShardObjects
from spot_workflows.runtime.shards.planning import (
    DoneRecord,
    FailureRecord,
    Partial,
    PartRef,
    Shard,
    check_plan,
    plan_digest,
    progress_fraction,
)
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

log = logging.getLogger("spot_workflows.shards")

ROOT = "shards"


@dataclass(frozen=True)
class Commit:
    """What :meth:`ShardLedger.commit` did: ``won`` is False when another worker committed first
    (``record`` is then theirs)."""

    won: bool
    record: DoneRecord


class ShardLedger:
    """Durable per-shard state of one sharded step, shared by every worker and attempt."""

    def __init__(
        self,
        *,
        store: CheckpointStore,
        shards: Sequence[Shard],
        worker: str = "w0",
        attempt: int | None = None,
        max_failures: int = 3,
        progress_every_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_plan(shards)
        if max_failures < 1:
            raise ConfigError(f"max_failures must be >= 1, got {max_failures}")
        self.store = store
        self.shards = list(shards)
        self.worker = worker
        self.attempt = attempt
        self.max_failures = max_failures
        self.clock = clock
        self.digest = plan_digest(self.shards)
        self._by_id = {s.id: s for s in self.shards}
        self.objects = ShardObjects(store)
        self.progress_every_s = progress_every_s
        self._published, self._published_at = 0, float("-inf")
        # Progress checkpoints are pruned here, quietly: several workers publish concurrently.
        self._progress_store = copy.copy(store)
        self._progress_store.keep_last = 2**31
        self._check_plan()

    def __repr__(self) -> str:
        return f"ShardLedger({self.store.uri!r}, shards={len(self.shards)}, worker={self.worker!r})"

    # -- the plan ------------------------------------------------------------------------------
    def _check_plan(self) -> None:
        doc = {"digest": self.digest, "shards": [s.to_dict() for s in self.shards]}
        if self.objects.create_exclusive(f"{ROOT}/plan.json", json.dumps(doc).encode()):
            return
        raw = self.store.read(f"{ROOT}/plan.json") or b"{}"
        try:
            theirs = json.loads(raw).get("digest")
        except ValueError:
            theirs = None
        if theirs != self.digest:
            raise ConfigError(
                f"{self.store.uri} already holds a different shard plan (digest {theirs}, this "
                f"worker's is {self.digest}): every worker must plan the same shards; use a fresh "
                "checkpoint URI for a different dataset or shard size"
            )

    def shard(self, shard_id: str) -> Shard:
        try:
            return self._by_id[shard_id]
        except KeyError:
            raise ConfigError(f"shard {shard_id!r} is not in this plan") from None

    # -- commits -------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return {n[:-5] for n in self.objects.names(f"{ROOT}/done") if n.endswith(".json")}

    def dead_ids(self) -> set[str]:
        return {n[:-5] for n in self.objects.names(f"{ROOT}/dead") if n.endswith(".json")}

    def is_done(self, shard_id: str) -> bool:
        return self.store.read(f"{ROOT}/done/{shard_id}.json") is not None

    def record(self, shard_id: str) -> DoneRecord | None:
        return self.objects.read_model(f"{ROOT}/done/{shard_id}.json", DoneRecord)

    def commit(self, shard: Shard, data: bytes | Path, *, rows: int, suffix: str = "") -> Commit:
        """Write ``data`` as the shard's output and commit it, unless another worker did first."""
        marker = f"{ROOT}/done/{shard.id}.json"
        existing = self.record(shard.id)
        if existing is not None:
            return Commit(won=False, record=existing)
        obj = f"{ROOT}/out/{shard.id}/{secrets.token_hex(8)}{suffix}"
        size, sha = self.objects.write_object(obj, data)
        record = DoneRecord(
            shard=shard.id,
            object=obj,
            rows=rows,
            bytes=size,
            sha256=sha,
            worker=self.worker,
            attempt=self.attempt,
            committed_at=self.clock(),
        )
        if self.objects.create_exclusive(marker, record.model_dump_json().encode()):
            self.objects.rm(f"{ROOT}/claims/{shard.id}", recursive=True)
            return Commit(won=True, record=record)
        self.objects.rm(obj)  # another worker won: our copy is garbage
        theirs = self.record(shard.id)
        assert theirs is not None
        return Commit(won=False, record=theirs)

    def read_output(self, shard: Shard) -> bytes:
        """The committed output of ``shard``, verified against its marker's size and sha256."""
        record = self.record(shard.id)
        if record is None:
            raise CheckpointError(f"shard {shard.id} is not committed in {self.store.uri}")
        data = self.store.read(record.object)
        digest = None if data is None else hashlib.sha256(data).hexdigest()
        if data is None or len(data) != record.bytes or digest != record.sha256:
            raise CorruptCheckpointError(
                f"output {self.store.uri}/{record.object} of shard {shard.id} is missing or does "
                f"not match its marker; delete {ROOT}/done/{shard.id}.json to redo the shard"
            )
        return data

    def export(self, directory: str | os.PathLike[str], *, suffix: str = "") -> list[Path]:
        """Copy every committed output to ``directory/part-<index><suffix>`` (verified)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for shard in self.shards:
            dest = out / f"part-{shard.index:06d}{suffix}"
            tmp = dest.with_name(f"{TMP_PREFIX}{dest.name}")
            tmp.write_bytes(self.read_output(shard))
            os.replace(tmp, dest)
            paths.append(dest)
        return paths

    # -- failures ------------------------------------------------------------------------------
    def fail(self, shard: Shard, error: str, *, final: bool = False) -> FailureRecord:
        """Record an application error; the ``max_failures``-th (or a ``final`` one) marks the
        shard dead: no source hands it out again and the step reports it."""
        seen = len(self.objects.names(f"{ROOT}/failed/{shard.id}"))
        final = final or seen + 1 >= self.max_failures
        record = FailureRecord(
            shard=shard.id, worker=self.worker, error=error[:2000], at=self.clock(), final=final
        )
        body = record.model_dump_json().encode()
        name = f"{time.time_ns():020d}-{secrets.token_hex(3)}.json"
        self.store.write_atomic(f"{ROOT}/failed/{shard.id}/{name}", body)
        if final:
            self.objects.create_exclusive(f"{ROOT}/dead/{shard.id}.json", body)
            log.error("shard %s given up after %d failure(s): %s", shard.id, seen + 1, error)
        return record

    def failures(self, shard_id: str) -> list[FailureRecord]:
        rel = f"{ROOT}/failed/{shard_id}"
        return [
            self.objects.read_model(f"{rel}/{n}", FailureRecord) for n in self.objects.names(rel)
        ]

    # -- in-shard checkpoints ------------------------------------------------------------------
    def save_partial(
        self, shard: Shard, new_parts: Sequence[tuple[int, bytes]], *, base: Partial | None
    ) -> Partial:
        """Checkpoint inside ``shard``: ``base``'s parts plus ``new_parts`` ((rows, bytes), in
        order). Parts go first, then the index object, atomically (a torn save keeps ``base``)."""
        refs = list(base.parts) if base else []
        token = secrets.token_hex(6)
        for rows, data in new_parts:
            obj = f"{ROOT}/partial/{shard.id}/{token}-{len(refs):05d}"
            size, sha = self.objects.write_object(obj, data)
            refs.append(PartRef(object=obj, rows=rows, bytes=size, sha256=sha))
        partial = Partial(
            shard=shard.id,
            rows=sum(r.rows for r in refs),
            parts=refs,
            worker=self.worker,
            saved_at=self.clock(),
        )
        self.store.write_atomic(
            f"{ROOT}/partial/{shard.id}.json", partial.model_dump_json().encode()
        )
        return partial

    def load_partial(self, shard: Shard) -> tuple[Partial, list[bytes]] | None:
        """The shard's in-shard checkpoint and its parts (verified), or None (start at row 0)."""
        try:
            partial = self.objects.read_model(f"{ROOT}/partial/{shard.id}.json", Partial)
        except CorruptCheckpointError as exc:
            log.warning("ignoring in-shard checkpoint: %s", exc)
            return None
        if partial is None:
            return None
        parts = []
        for ref in partial.parts:
            data = self.store.read(ref.object)
            if data is None or hashlib.sha256(data).hexdigest() != ref.sha256:
                log.warning("in-shard checkpoint of %s is damaged (%s); redoing it", shard.id, ref)
                return None
            parts.append(data)
        return partial, parts

    def clear_partial(self, shard: Shard) -> None:
        self.objects.rm(f"{ROOT}/partial/{shard.id}.json")
        self.objects.rm(f"{ROOT}/partial/{shard.id}", recursive=True)

    # -- claims (leases for the store-claims source) -------------------------------------------
    def _claim_rel(self, shard_id: str, gen: int) -> str:
        return f"{ROOT}/claims/{shard_id}/{gen:06d}.json"

    def _claim_body(self, gen: int, ttl_s: float) -> bytes:
        doc = {"worker": self.worker, "gen": gen, "expires_at": self.clock() + ttl_s}
        return json.dumps(doc).encode()

    def _newest_claim(self, shard_id: str) -> tuple[int, dict | None] | None:
        gens = [n for n in self.objects.names(f"{ROOT}/claims/{shard_id}") if n.endswith(".json")]
        if not gens:
            return None
        gen = int(max(gens)[:-5])
        raw = self.store.read(self._claim_rel(shard_id, gen))
        try:
            return gen, json.loads(raw) if raw else None
        except ValueError:
            return gen, None

    def try_claim(self, shard: Shard, *, ttl_s: float) -> int | None:
        """Lease ``shard`` for ``ttl_s`` seconds; returns the claim generation, or None when
        another live worker holds it. A claim of this same worker id (a restarted worker) or an
        expired one is taken over at once by creating the next generation exclusively."""
        newest = self._newest_claim(shard.id)
        gen = 0
        if newest is not None:
            gen, doc = newest
            mine = doc is not None and doc.get("worker") == self.worker
            expired = doc is not None and float(doc.get("expires_at", 0)) <= self.clock()
            if not (mine or expired):
                return None
            gen += 1
        body = self._claim_body(gen, ttl_s)  # a lease: losing it in a crash is harmless
        if self.objects.create_exclusive(self._claim_rel(shard.id, gen), body, durable=False):
            return gen
        return None

    def renew_claim(self, shard: Shard, gen: int, *, ttl_s: float) -> bool:
        """Extend our lease; False when someone took the shard over (we keep going: the
        exclusive commit decides, the loser's output is dropped)."""
        newest = self._newest_claim(shard.id)
        if newest is None or newest[0] != gen:
            return False
        self.store.write_atomic(self._claim_rel(shard.id, gen), self._claim_body(gen, ttl_s))
        return True

    def release_claim(self, shard: Shard, gen: int) -> None:
        """Let any worker take ``shard`` now (we are stopping)."""
        newest = self._newest_claim(shard.id)
        if newest is not None and newest[0] == gen:
            self.store.write_atomic(self._claim_rel(shard.id, gen), self._claim_body(gen, -1.0))

    # -- progress ------------------------------------------------------------------------------
    def status(self) -> dict:
        """Counts for progress bars and reports (one listing of done/ and dead/)."""
        done, dead = self.done_ids(), self.dead_ids()
        rows = [s.rows for s in self.shards if s.id in done]
        return {
            "shards": len(self.shards),
            "done": len(done),
            "dead": sorted(dead),
            "rows_done": sum(r for r in rows if r is not None),
            "progress": progress_fraction(self.shards, done),
            "complete": len(done) + len(dead - done) >= len(self.shards),
        }

    def publish_progress(self, *, force: bool = False) -> float | None:
        """Save a progress checkpoint (``step-<n>``, n = shards committed, ``progress`` = the
        fraction) so ``CheckpointStore.latest()``, the runner's ledger and deadline-aware
        escalation see it. At most every ``progress_every_s`` per worker; one worker publishes
        each n (exclusive ``shards/progress/<n>``); ``force`` (end of a worker) publishes now,
        and also when another worker claimed n but the newest checkpoint is still behind. Returns the fraction (None: not due yet)."""
        if not force and self.clock() - self._published_at < self.progress_every_s:
            return None
        done = self.done_ids()
        n, fraction = len(done), progress_fraction(self.shards, done)
        if n == 0 or n <= self._published:
            return fraction
        claim = f"{ROOT}/progress/{n:09d}"
        if not self.objects.create_exclusive(claim, b"", durable=False):
            latest = self.store.latest() if force else None  # its publisher may have died
            if not force or (latest is not None and latest.step >= n):
                self._published = n
                return fraction
        body = {"plan": self.digest, "shards": len(self.shards), "done": n, "progress": fraction}
        try:
            self._progress_store.save(
                n,
                {"shards.json": json.dumps(body, sort_keys=True).encode()},
                progress=round(fraction, 6),
                metadata={"kind": "shards", "worker": self.worker, "attempt": self.attempt},
            )
        except CheckpointError as exc:  # a newer progress checkpoint won the race: fine
            log.debug("progress checkpoint %d not saved: %s", n, exc)
        self._published, self._published_at = n, self.clock()
        self._prune_progress()
        return fraction

    def _prune_progress(self) -> None:
        """Keep the newest ``store.keep_last`` progress checkpoints (manifest first, then files)."""
        try:
            old = self.store.steps()[: -self.store.keep_last]
        except OSError:
            return
        for step in old:
            self.objects.rm(f"step-{step}/manifest.json")
            self.objects.rm(f"step-{step}", recursive=True)
