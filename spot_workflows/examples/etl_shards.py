"""Sharded ETL preprocessing on spot: text normalisation, tokenisation, feature hashing to Parquet.

The job generates its own raw dataset (``--rows`` rows of messy text in Parquet files of
``--rows-per-file`` rows; deterministic from ``--seed``), plans one shard per raw file, and writes
one Parquet output per shard through the shard ledger in ``SPOT_CHECKPOINT_URI``: every row is
NFKD-normalised, accent-stripped, lowercased, split into tokens and hashed into a signed sparse
feature vector (2**18 buckets, crc32). A reclaimed worker resumes at the next unfinished shard
(or inside one, from its in-shard checkpoint); parallel workers never commit a shard twice.

Run it as the step command of any backend (``--workers N`` runs N worker processes that claim
shards dynamically), or try it on the local backend with reclaims::

    python -m spot_workflows.examples.etl_shards_demo --rows 1000000 --workers 2
    SPOT_CHECKPOINT_URI=file:///tmp/etl/ckpt \\
        python -m spot_workflows.examples.etl_shards --data /tmp/etl/raw --workers 2 --verify

``--verify`` recomputes every shard with plain processing (no ledger, no interruptions) and
compares it byte for byte with the committed output, and checks every row id appears once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.shards.ledger import ShardLedger
from spot_workflows.runtime.shards.planning import Shard, plan_files
from spot_workflows.runtime.shards.queue import (
    ClaimSource,
    SqsSource,
    StaticSource,
    array_position,
    enqueue_shards,
)
from spot_workflows.runtime.shards.worker import (
    LedgerProgress,
    ShardWorker,
    run_processes,
    worker_id,
)

DIM = 1 << 18
BATCH_ROWS = 4096
_TEXT = (
    "Spot capacity is cheap; the reclaim NOTICE gives a worker two minutes — Café naïve résumé "
    "TOKENISE normalise hash features Parquet shards ETL batch inference GPUs on-demand costs "
    "more, Zürich São-Paulo 2026 deadline budget! «quoted» e-mail: ops@example.com (v2.1)"
)
WORDS = _TEXT.split()
OUT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("text", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("n_tokens", pa.int32()),
        ("feat_idx", pa.list_(pa.int32())),
        ("feat_val", pa.list_(pa.float32())),
    ]
)


# -- the raw dataset (generated, deterministic) ------------------------------------------------


@lru_cache(maxsize=4)
def _fragments(seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(4096))


def raw_table(start: int, stop: int, seed: int) -> pa.Table:
    """Rows ``[start, stop)`` of the raw dataset: ``id`` and messy ``text``."""
    frags = _fragments(seed)
    texts = []
    for i in range(start, stop):
        h = (i * 2654435761 + seed) & 0xFFFFFFFF
        second = frags[(h >> 12) & 4095]
        texts.append(f"  {frags[h & 4095]}\t {second.upper() if h & 1 else second} #{i % 9973} ")
    return pa.table({"id": pa.array(range(start, stop), pa.int64()), "text": pa.array(texts)})


def generate_raw(directory: Path, *, rows: int, rows_per_file: int, seed: int) -> dict[str, int]:
    """Write the raw dataset (skipping files already there); returns file name -> rows."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for start in range(0, rows, rows_per_file):
        stop = min(start + rows_per_file, rows)
        name = f"raw-s{seed}-{start:010d}-{stop:010d}.parquet"
        path = directory / name
        if not path.exists():
            tmp = directory / f".tmp-{os.getpid()}-{name}"
            pq.write_table(raw_table(start, stop, seed), tmp)
            os.replace(tmp, path)
        out[name] = stop - start
    return out


def plan(directory: Path, *, rows: int, rows_per_file: int, seed: int) -> list[Shard]:
    """One shard per raw file (ids from the file names, so the plan is the same on every host)."""
    counts = generate_raw(directory, rows=rows, rows_per_file=rows_per_file, seed=seed)
    return plan_files(counts, rows=counts)


# -- the transformation -------------------------------------------------------------------------


@lru_cache(maxsize=200_000)
def _bucket(token: str) -> tuple[int, float]:
    h = zlib.crc32(token.encode())
    return h % DIM, (1.0 if h & 0x80000000 else -1.0)


def transform(table: pa.Table) -> pa.Table:
    """Normalise, tokenise and feature-hash ``table`` (``id``, ``text``); row by row pure."""
    text = pc.utf8_normalize(table["text"], "NFKD")
    text = pc.replace_substring_regex(text, r"\p{Mn}+", "")  # strip accents
    text = pc.utf8_trim_whitespace(
        pc.replace_substring_regex(pc.utf8_lower(text), "[^a-z0-9]+", " ")
    )
    tokens = pc.utf8_split_whitespace(text)
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    flat = pc.list_flatten(tokens).to_pylist()
    offsets = tokens.offsets.to_pylist()
    idx_rows, val_rows = [], []
    for r in range(len(offsets) - 1):
        acc: dict[int, float] = {}
        for tok in flat[offsets[r] : offsets[r + 1]]:
            b, sign = _bucket(tok)
            acc[b] = acc.get(b, 0.0) + sign
        keys = sorted(acc)
        idx_rows.append(keys)
        val_rows.append([acc[k] for k in keys])
    return pa.table(
        [
            table["id"],
            text,
            tokens,
            pc.list_value_length(tokens).cast(pa.int32()),
            pa.array(idx_rows, pa.list_(pa.int32())),
            pa.array(val_rows, pa.list_(pa.float32())),
        ],
        schema=OUT_SCHEMA,
    )


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


class EtlJob:
    """The :class:`ShardJob`: batches are Arrow IPC, the shard output one Parquet file."""

    suffix = ".parquet"

    def __init__(self, data: Path, *, batch_rows: int = BATCH_ROWS, delay_s: float = 0.0) -> None:
        self.data, self.batch_rows, self.delay_s = Path(data), batch_rows, delay_s

    def batches(self, shard: Shard, start: int) -> Iterable[tuple[int, bytes]]:
        assert shard.key is not None
        raw = pq.read_table(self.data / shard.key)
        for offset in range(start, raw.num_rows, self.batch_rows):
            chunk = raw.slice(offset, self.batch_rows)
            if self.delay_s:
                time.sleep(self.delay_s)  # test aid: a slower "model"
            yield chunk.num_rows, _ipc(transform(chunk))

    def combine(self, shard: Shard, parts: Sequence[bytes]) -> bytes:
        tables = [pa.ipc.open_stream(p).read_all() for p in parts]
        table = pa.concat_tables(tables).combine_chunks() if tables else OUT_SCHEMA.empty_table()
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", row_group_size=65_536)
        return sink.getvalue()

    def reference(self, shard: Shard) -> bytes:
        """The shard's output from plain, uninterrupted processing (no ledger)."""
        return self.combine(shard, [part for _, part in self.batches(shard, 0)])


def verify(ledger: ShardLedger, job: EtlJob) -> dict:
    """Committed outputs vs. an uninterrupted run, byte for byte; every row id exactly once."""
    done = ledger.done_ids()
    missing = [s.id for s in ledger.shards if s.id not in done]
    mismatched, ids, digest = [], [], hashlib.sha256()
    for shard in ledger.shards:
        if shard.id in done:
            got = ledger.read_output(shard)
            digest.update(hashlib.sha256(got).digest())
            ids += pq.read_table(io.BytesIO(got), columns=["id"])["id"].to_pylist()
            if got != job.reference(shard):
                mismatched.append(shard.id)
    expected = sum(s.rows or 0 for s in ledger.shards)
    exact_rows = sorted(ids) == list(range(expected))
    return {
        "verified": not missing and not mismatched and exact_rows,
        "shards": len(ledger.shards),
        "rows": len(ids),
        "distinct_rows": len(set(ids)),
        "expected_rows": expected,
        "missing": missing,
        "mismatched": mismatched,
        "output_sha256": digest.hexdigest(),
    }


# -- the command ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_data = Path(tempfile.gettempdir()) / "spot-etl-raw"
    ap.add_argument("--data", type=Path, default=default_data, help="raw dataset directory")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-file", type=int, default=25_000, help="rows per raw file = shard")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    ap.add_argument("--workers", type=int, default=1, help="worker processes in this step")
    ap.add_argument("--source", choices=("claims", "static", "sqs"), default="claims")
    ap.add_argument("--array-index", type=int, default=None)
    ap.add_argument("--array-size", type=int, default=None)
    ap.add_argument("--queue-url", default=None, help="SQS queue (--source sqs)")
    ap.add_argument("--endpoint-url", default=None, help="SQS endpoint (moto, localstack)")
    ap.add_argument("--claim-ttl", type=float, default=120.0)
    ap.add_argument("--worker-id", default=None, help="(internal) run as this worker")
    ap.add_argument("--delay-s", type=float, default=0.0, help="extra seconds per batch")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--export", type=Path, default=None, help="copy outputs to DIR/part-*.parquet")
    return ap


def _source(args: argparse.Namespace, ledger: ShardLedger):
    if args.source == "static":
        index, count = array_position(os.environ, index=args.array_index, count=args.array_size)
        return StaticSource(ledger, index=index, count=count)
    if args.source == "sqs":
        import boto3  # only this mode needs the aws extra

        client = boto3.client("sqs", endpoint_url=args.endpoint_url)
        enqueue_shards(client, args.queue_url, ledger)
        return SqsSource(ledger, client=client, queue_url=args.queue_url)
    return ClaimSource(ledger, ttl_s=args.claim_ttl)


def _finish(args: argparse.Namespace, ledger: ShardLedger, job: EtlJob) -> int:
    if args.export is not None:
        ledger.export(args.export, suffix=job.suffix)
    if args.verify:
        result = verify(ledger, job)
        print(json.dumps(result), flush=True)
        return 0 if result["verified"] else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shards = plan(args.data, rows=args.rows, rows_per_file=args.rows_per_file, seed=args.seed)
    job = EtlJob(args.data, batch_rows=args.batch_rows, delay_s=args.delay_s)
    if args.workers > 1 and args.worker_id is None:  # the coordinator
        ckpt = Checkpointer.from_env(handle_signals=False)
        ledger = ShardLedger(store=ckpt.store, shards=shards, worker="coordinator")
        argv = list(sys.argv[1:] if argv is None else argv)
        commands = [
            [
                sys.executable,
                "-m",
                "spot_workflows.examples.etl_shards",
                *argv,
                "--workers=1",
                f"--worker-id=w{k}",
            ]
            for k in range(args.workers)
        ]
        with LedgerProgress(ledger, enabled=sys.stderr.isatty()):
            code = run_processes(commands)
        if code == 0 and ledger.status()["complete"]:
            ledger.publish_progress(force=True)
            return _finish(args, ledger, job)
        return code
    with Checkpointer.from_env() as ckpt:
        ledger = ShardLedger(
            store=ckpt.store,
            shards=shards,
            worker=args.worker_id or worker_id(os.environ),
            attempt=ckpt.attempt,
        )
        worker = ShardWorker(
            ledger=ledger, source=_source(args, ledger), job=job, checkpointer=ckpt
        )
        standalone = args.worker_id is None
        with LedgerProgress(ledger, enabled=standalone and sys.stderr.isatty()):
            report = worker.run()
        print(f"REPORT {report.to_json()}", flush=True)
        if report.stopped:
            ckpt.exit_preempted()
        if report.exit_code:
            print(f"dead shards: {report.dead_in_ledger}; see shards/failed/", file=sys.stderr)
            return report.exit_code
        return _finish(args, ledger, job) if standalone else 0


if __name__ == "__main__":
    sys.exit(main())
