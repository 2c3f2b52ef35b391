"""Where a worker's next shard comes from: a static partition, store claims, or an SQS queue.

Every source hands out :class:`Lease` objects; the worker calls ``heartbeat()`` while it works,
``done()`` after the commit, ``release()`` when it stops on a notice, ``failed(error)`` on an
application error. Whatever the source, the commit itself is exclusive (see ``shard_ledger``), so
a shard handed out twice (an expired lease, an SQS redelivery) is still committed once.

* :class:`StaticSource`: array job ``index`` of ``count`` takes every ``count``-th shard
  (``AWS_BATCH_JOB_ARRAY_INDEX`` / GCP ``BATCH_TASK_INDEX``); no coordination at all.
* :class:`ClaimSource`: dynamic work stealing through exclusive claim objects in the store (local
  worker processes, or any workers sharing an s3:// / gs:// URI). A claim is a lease with a TTL;
  the same worker id takes its own claim back at once after a restart.
* :class:`SqsSource`: dynamic work stealing through an SQS queue (boto3 client injected). A worker
  that dies holding a message has it redelivered after the visibility timeout; a shard received
  more than ``max_receives`` times, or failing ``max_failures`` times, is recorded dead (and sent
  to the dead-letter queue when one is given) instead of being retried forever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from spot_workflows.errors import ConfigError
from spot_workflows.runtime.shards.ledger import ROOT, ShardLedger
from spot_workflows.runtime.shards.planning import Shard, pending, static_partition

log = logging.getLogger("spot_workflows.shards")

Stop = Callable[[], bool]


class Lease(Protocol):
    shard: Shard

    def heartbeat(self) -> None: ...

    def done(self) -> None: ...

    def release(self) -> None: ...

    def failed(self, error: str) -> bool:
        """Record an application error; True when the shard is now dead (not retried)."""
        ...


class ShardSource(Protocol):
    def next(self, stop: Stop) -> Lease | None:
        """The next shard to work on, or None when nothing is left (or ``stop()`` turned true)."""
        ...


def array_position(
    environ: Mapping[str, str], *, index: int | None = None, count: int | None = None
) -> tuple[int, int]:
    """(index, count) of this array task: arguments first, then ``AWS_BATCH_JOB_ARRAY_INDEX`` or
    ``BATCH_TASK_INDEX`` for the index and ``SPOT_ARRAY_SIZE`` or ``BATCH_TASK_COUNT`` for the
    count. A plain (non-array) job is task 0 of 1."""

    def pick(value: int | None, names: tuple[str, ...]) -> int | None:
        if value is not None:
            return value
        for name in names:
            raw = environ.get(name)
            if raw:
                try:
                    return int(raw)
                except ValueError:
                    raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        return None

    idx = pick(index, ("AWS_BATCH_JOB_ARRAY_INDEX", "BATCH_TASK_INDEX"))
    size = pick(count, ("SPOT_ARRAY_SIZE", "BATCH_TASK_COUNT"))
    if idx is None and size is None:
        return 0, 1
    if size is None:
        raise ConfigError(
            f"array index {idx} is set but the array size is not: pass it (e.g. --array-size) or "
            "set SPOT_ARRAY_SIZE (AWS Batch does not export the array size; GCP sets "
            "BATCH_TASK_COUNT)"
        )
    idx = 0 if idx is None else idx
    if size < 1 or not 0 <= idx < size:
        raise ConfigError(f"array index {idx} is outside an array of size {size}")
    return idx, size


# -- static partitions and store claims ---------------------------------------------------------


class _LedgerLease:
    """A lease with no coordination (static partitions): only failures are recorded."""

    def __init__(self, ledger: ShardLedger, shard: Shard) -> None:
        self.ledger = ledger
        self.shard = shard

    def heartbeat(self) -> None:
        pass

    def done(self) -> None:
        pass

    def release(self) -> None:
        pass

    def failed(self, error: str) -> bool:
        return self.ledger.fail(self.shard, error).final


class StaticSource:
    """Array task ``index`` of ``count`` works through its own shards (round-robin split)."""

    def __init__(self, ledger: ShardLedger, *, index: int = 0, count: int = 1) -> None:
        self.ledger = ledger
        self.shards = static_partition(ledger.shards, index, count)

    @classmethod
    def from_env(
        cls, ledger: ShardLedger, environ: Mapping[str, str], *, count: int | None = None
    ) -> StaticSource:
        index, size = array_position(environ, count=count)
        return cls(ledger, index=index, count=size)

    def next(self, stop: Stop) -> Lease | None:
        if stop():
            return None
        todo = pending(self.shards, self.ledger.done_ids(), self.ledger.dead_ids())
        return _LedgerLease(self.ledger, todo[0]) if todo else None


class _ClaimLease(_LedgerLease):
    def __init__(
        self, ledger: ShardLedger, shard: Shard, gen: int, ttl_s: float, clock: Callable
    ) -> None:
        super().__init__(ledger, shard)
        self.gen, self.ttl_s, self.clock = gen, ttl_s, clock
        self._renewed = clock()

    def heartbeat(self) -> None:
        if self.clock() - self._renewed >= self.ttl_s / 3:
            if not self.ledger.renew_claim(self.shard, self.gen, ttl_s=self.ttl_s):
                log.info("claim on %s was taken over; the commit decides", self.shard.id)
            self._renewed = self.clock()

    def release(self) -> None:
        self.ledger.release_claim(self.shard, self.gen)

    def failed(self, error: str) -> bool:
        final = self.ledger.fail(self.shard, error).final
        self.ledger.release_claim(self.shard, self.gen)
        return final


class ClaimSource:
    """Dynamic work stealing through exclusive claims in the store (see ``try_claim``).

    Pending shards are tried in plan order; when every pending shard is held by another live
    worker, it waits ``poll_s`` and looks again (a dead worker's claim expires after ``ttl_s``).
    """

    def __init__(
        self,
        ledger: ShardLedger,
        *,
        ttl_s: float = 120.0,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if ttl_s <= 0 or poll_s <= 0:
            raise ConfigError("ttl_s and poll_s must be > 0 seconds")
        self.ledger, self.ttl_s, self.poll_s = ledger, ttl_s, poll_s
        self.clock, self.sleep = clock, sleep

    def next(self, stop: Stop) -> Lease | None:
        while not stop():
            todo = pending(self.ledger.shards, self.ledger.done_ids(), self.ledger.dead_ids())
            if not todo:
                return None
            for shard in todo:
                gen = self.ledger.try_claim(shard, ttl_s=self.ttl_s)
                if gen is None:
                    continue
                if self.ledger.is_done(shard.id):  # committed between the listing and the claim
                    continue
                return _ClaimLease(self.ledger, shard, gen, self.ttl_s, self.clock)
            self.sleep(self.poll_s)
        return None


# -- SQS ----------------------------------------------------------------------------------------


def create_shard_queue(
    client: Any, name: str, *, visibility_timeout_s: int = 300, max_receives: int = 5
) -> tuple[str, str]:
    """Create (or find) the work queue ``name`` and its dead-letter queue ``name-dlq``.

    The redrive policy (``maxReceiveCount = max_receives + 1``) is a backstop: the workers
    themselves record a shard dead on its ``max_receives + 1``-th delivery. Returns both URLs.
    """
    dlq_url = client.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives + 1)}
    url = client.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(int(visibility_timeout_s)),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    return url, dlq_url


def enqueue_shards(client: Any, queue_url: str, ledger: ShardLedger) -> int:
    """Send one message per unfinished shard, once per (ledger, queue); returns how many.

    The "enqueued" marker is written after the last send, so a producer that dies half-way is
    simply repeated: duplicate messages are harmless (the commit is exclusive), gaps impossible.
    """
    marker = f"{ROOT}/queues/{hashlib.sha256(queue_url.encode()).hexdigest()[:16]}.json"
    if ledger.store.read(marker) is not None:
        return 0
    todo = pending(ledger.shards, ledger.done_ids(), ledger.dead_ids())
    for i in range(0, len(todo), 10):
        entries = [
            {"Id": str(j), "MessageBody": json.dumps({"shard": s.id, "plan": ledger.digest})}
            for j, s in enumerate(todo[i : i + 10])
        ]
        resp = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if resp.get("Failed"):
            raise ConfigError(f"SQS refused shard messages: {resp['Failed'][:3]}")
    body = json.dumps({"queue_url": queue_url, "shards": len(todo), "plan": ledger.digest})
    ledger.store.write_atomic(marker, body.encode())
    return len(todo)


class _SqsLease:
    def __init__(self, source: SqsSource, shard: Shard, message: dict) -> None:
        self.source, self.shard = source, shard
        self.handle = message["ReceiptHandle"]
        self.body = message["Body"]
        self._extended = source.clock()

    def heartbeat(self) -> None:
        s = self.source
        if s.clock() - self._extended >= s.visibility_timeout_s / 3:
            s.client.change_message_visibility(
                QueueUrl=s.queue_url, ReceiptHandle=self.handle, VisibilityTimeout=s.vis
            )
            self._extended = s.clock()

    def done(self) -> None:
        self.source.client.delete_message(QueueUrl=self.source.queue_url, ReceiptHandle=self.handle)

    def release(self) -> None:
        # A fresh message, so a notice does not count as a delivery of this shard.
        s = self.source
        s.client.send_message(QueueUrl=s.queue_url, MessageBody=self.body)
        self.done()

    def failed(self, error: str) -> bool:
        s = self.source
        record = s.ledger.fail(self.shard, error)
        if record.final:
            s.dead_letter(self.body)
            self.done()
        else:
            s.client.change_message_visibility(
                QueueUrl=s.queue_url, ReceiptHandle=self.handle, VisibilityTimeout=s.retry_delay
            )
        return record.final


class SqsSource:
    """Shards from an SQS queue (``enqueue_shards``), with visibility-timeout leases."""

    def __init__(
        self,
        ledger: ShardLedger,
        *,
        client: Any,
        queue_url: str,
        dlq_url: str | None = None,
        visibility_timeout_s: float = 300.0,
        max_receives: int = 5,
        retry_delay_s: float = 5.0,
        wait_s: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if visibility_timeout_s < 1 or max_receives < 1:
            raise ConfigError("visibility_timeout_s must be >= 1 and max_receives >= 1")
        self.ledger, self.client, self.queue_url, self.dlq_url = ledger, client, queue_url, dlq_url
        self.visibility_timeout_s = visibility_timeout_s
        self.vis = int(visibility_timeout_s)
        self.max_receives = max_receives
        self.retry_delay = int(retry_delay_s)
        self.wait_s = wait_s
        self.clock = clock

    def dead_letter(self, body: str) -> None:
        if self.dlq_url:
            self.client.send_message(QueueUrl=self.dlq_url, MessageBody=body)

    def _queue_empty(self) -> bool:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)
        return all(int(attrs["Attributes"].get(n, "0")) == 0 for n in names)

    def next(self, stop: Stop) -> Lease | None:
        empty_polls = 0
        while not stop():
            resp = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=self.wait_s,
                VisibilityTimeout=self.vis,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            messages = resp.get("Messages") or []
            if not messages:
                if self.ledger.status()["complete"]:
                    return None
                empty_polls = empty_polls + 1 if self._queue_empty() else 0
                if empty_polls >= 2:  # approximate counts: believe "empty" twice in a row
                    log.warning("SQS queue is empty but shards are unfinished: enqueue them again")
                    return None
                continue
            lease = self._accept(messages[0])
            if lease is not None:
                return lease
        return None

    def _accept(self, message: dict) -> Lease | None:
        try:
            body = json.loads(message["Body"])
            shard_id, plan = body["shard"], body["plan"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{self.queue_url} holds a message that is not a shard") from None
        if plan != self.ledger.digest:
            raise ConfigError(
                f"{self.queue_url} holds shards of another plan ({plan}); use one queue per step"
            )
        shard = self.ledger.shard(shard_id)
        receives = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
        lease = _SqsLease(self, shard, message)
        if self.ledger.is_done(shard.id) or shard.id in self.ledger.dead_ids():
            lease.done()  # a duplicate of a finished shard
            return None
        if receives > self.max_receives:
            why = f"delivered {receives} times without a commit (its workers keep dying)"
            self.ledger.fail(shard, why, final=True)
            self.dead_letter(lease.body)
            lease.done()
            return None
        return lease
