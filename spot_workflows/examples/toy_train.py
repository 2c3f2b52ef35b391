"""A real, deterministic, CPU-only training script that checkpoints through the async checkpointer.

Least-squares regression of a fixed random teacher, trained with SGD + momentum in pure Python.
Every minibatch is derived from (seed, step), so a run resumed from any checkpoint computes exactly
the same numbers as an uninterrupted run: the final weights are bit-identical.

Run under spot-workflows (``SPOT_CHECKPOINT_URI`` set): restores the latest checkpoint, saves
every ``--every`` steps, and on a termination notice saves at once and exits 75. Run with
``--reference`` to train uninterrupted with no checkpoints and print the checksum.

Saves go through :class:`~spot_workflows.runtime.checkpoint.async_checkpoint.AsyncCheckpointer` (snapshot,
then background write; the emergency save flushes the newest snapshot) unless ``--checkpointer
sync`` picks the plain :class:`~spot_workflows.runtime.checkpoint.checkpointer.Checkpointer`.
:func:`load_checkpoint` reads either format back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

DIM = 48
BATCH = 64
LR = 0.01
MOMENTUM = 0.9


def _teacher(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(DIM)]


def _batch(seed: int, step: int, teacher: list[float]) -> list[tuple[list[float], float]]:
    rng = random.Random(seed * 1_000_003 + step)
    out = []
    for _ in range(BATCH):
        x = [rng.gauss(0.0, 1.0) for _ in range(DIM)]
        y = sum(a * b for a, b in zip(x, teacher, strict=True)) + rng.gauss(0.0, 0.01)
        out.append((x, y))
    return out


def train_step(state: dict, seed: int, teacher: list[float]) -> None:
    """One SGD+momentum step, in place. ``state``: step, w, v."""
    w, v = state["w"], state["v"]
    grad = [0.0] * DIM
    for x, y in _batch(seed, state["step"], teacher):
        err = sum(a * b for a, b in zip(x, w, strict=True)) - y
        for i in range(DIM):
            grad[i] += err * x[i]
    for i in range(DIM):
        v[i] = MOMENTUM * v[i] + grad[i] / BATCH
        w[i] -= LR * v[i]
    state["step"] += 1


def pack(state: dict) -> bytes:
    return struct.pack(f"<q{DIM}d{DIM}d", state["step"], *state["w"], *state["v"])


def unpack(blob: bytes) -> dict:
    values = struct.unpack(f"<q{DIM}d{DIM}d", blob)
    return {"step": values[0], "w": list(values[1 : DIM + 1]), "v": list(values[DIM + 1 :])}


def checksum(state: dict) -> str:
    return hashlib.sha256(pack(state)).hexdigest()


def fresh_state() -> dict:
    return {"step": 0, "w": [0.0] * DIM, "v": [0.0] * DIM}


def reference(steps: int, seed: int) -> str:
    """Checksum of an uninterrupted run (no checkpoints, no notices)."""
    teacher = _teacher(seed)
    state = fresh_state()
    while state["step"] < steps:
        train_step(state, seed, teacher)
    return checksum(state)


def load_checkpoint(store, manifest) -> dict:
    """The training state in checkpoint ``manifest`` of ``store`` (either checkpointer's format)."""
    from spot_workflows.runtime.checkpoint.async_checkpoint import load_state

    if any(f.name == "state.bin" for f in manifest.files):  # the sync Checkpointer's format
        return unpack(store.read_file(manifest, "state.bin"))
    return unpack(load_state(store, manifest)["state"])


def _open(kind: str, every: int) -> tuple[Any, dict | None, Callable[[dict], dict]]:
    """(checkpointer, restored state or None, state -> files to save) for ``--checkpointer``."""
    if kind == "async":
        from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer

        ckpt: Any = AsyncCheckpointer.from_env(every_steps=every)
        restored = ckpt.restore()
        state = unpack(restored.state["state"]) if restored else None
        return ckpt, state, lambda s: {"state": pack(s)}
    from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer

    ckpt = Checkpointer.from_env(every_steps=every)
    restored = ckpt.restore()
    state = unpack(restored.read("state.bin")) if restored else None
    return ckpt, state, lambda s: {"state.bin": pack(s)}


def train(args: argparse.Namespace, teacher: list[float]) -> dict:
    """Train to ``args.steps`` from the newest checkpoint, saving on the cadence and on a notice."""
    ckpt, state, files = _open(args.checkpointer, args.every)
    with ckpt:
        print("START 0" if state is None else f"RESUME {state['step']}", flush=True)
        state = state or fresh_state()
        while state["step"] < args.steps:
            train_step(state, args.seed, teacher)
            step = state["step"]
            print(f"STEP {step}", flush=True)
            progress = step / args.steps
            if ckpt.stop_requested:
                report = ckpt.emergency_save(step, files(state), progress=progress)
                print(f"EMERGENCY {step} met_deadline={report.met_deadline}", flush=True)
                ckpt.exit_preempted()
            if ckpt.should_save(step) or step == args.steps:
                ckpt.save(step, files(state), progress=progress)
            if args.step_seconds:
                time.sleep(args.step_seconds)
        if args.checkpointer == "async":
            ckpt.flush()  # the last checkpoint is durable (raises if its write failed)
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    ap.add_argument("--step-seconds", type=float, default=0.0, help="extra pause per step")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument(
        "--checkpointer",
        choices=("async", "sync"),
        default="async",
        help="async: snapshot + background write (default); sync: write before continuing",
    )
    args = ap.parse_args(argv)
    if args.reference:
        print(json.dumps({"checksum": reference(args.steps, args.seed)}))
        return 0

    teacher = _teacher(args.seed)
    state = train(args, teacher)
    print(json.dumps({"checksum": checksum(state), "step": state["step"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
