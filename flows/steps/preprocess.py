"""ETL preprocessing step: normalize and tokenize raw JSONL text shards, shard by shard.

A real CPU step that runs under spot-workflows (``SPOT_CHECKPOINT_URI`` set by the backend). It
checkpoints after every shard (the number of shards done and the vocabulary counted so far), so
a reclaimed attempt resumes at the next shard; on a termination notice it stops before the next
shard and exits 75 (preempted). Output shards are written atomically, so a shard redone after a
reclaim simply replaces the partial one.

    python flows/steps/preprocess.py --input DIR --output DIR [--shard-seconds S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

from spot_workflows.runtime.checkpoint import Checkpointer

TOKEN = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset({"a", "an", "and", "the", "of", "to", "in", "is", "on", "for", "with"})


def normalize(text: str) -> list[str]:
    """Lowercase, split on anything that is not a letter or digit, drop stopwords."""
    return [t for t in TOKEN.findall(text.lower()) if t not in STOPWORDS]


def process_shard(src: Path, dst: Path, vocab: Counter) -> int:
    rows = 0
    tmp = dst.with_suffix(".tmp")
    with src.open() as fin, tmp.open("w") as fout:
        for line in fin:
            record = json.loads(line)
            tokens = normalize(record["text"])
            vocab.update(tokens)
            fout.write(json.dumps({"id": record["id"], "tokens": tokens}) + "\n")
            rows += 1
    os.replace(tmp, dst)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--shard-seconds", type=float, default=0.0, help="extra pause per shard")
    args = ap.parse_args(argv)
    shards = sorted(args.input.glob("*.jsonl"))
    if not shards:
        print(f"no *.jsonl shards in {args.input}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)

    ckpt = Checkpointer.from_env()
    restored = ckpt.restore()
    state = json.loads(restored.read("state.json")) if restored else {"done": 0, "vocab": {}}
    vocab = Counter(state["vocab"])
    print(f"RESUME {state['done']}" if restored else "START 0", flush=True)
    for index in range(state["done"], len(shards)):
        if ckpt.stop_requested:  # the last checkpoint is current: nothing to save
            print(f"STOPPING before shard {index + 1}: termination notice", flush=True)
            ckpt.exit_preempted()
        rows = process_shard(shards[index], args.output / shards[index].name, vocab)
        done = index + 1
        print(f"SHARD {done}/{len(shards)} rows={rows}", flush=True)
        blob = json.dumps({"done": done, "vocab": dict(vocab)}).encode()
        ckpt.save(done, {"state.json": blob}, progress=done / len(shards))
        if args.shard_seconds and done < len(shards):
            time.sleep(args.shard_seconds)
    top = dict(vocab.most_common(50))
    (args.output / "vocab.json").write_text(json.dumps(top, indent=1))
    print(json.dumps({"shards": len(shards), "distinct_tokens": len(vocab)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
