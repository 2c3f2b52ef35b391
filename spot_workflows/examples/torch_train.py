"""A deterministic PyTorch training step that checkpoints through the AsyncCheckpointer.

A small MLP with dropout, AdamW, a step LR schedule and a shuffled data loader seeded per epoch.
Run under spot-workflows (``SPOT_CHECKPOINT_URI`` set, e.g. through ``spot-run``): it restores the
newest checkpoint (model, optimizer, scheduler, RNG states, loader position), snapshots every
``--every`` steps and writes in the background, and on SIGTERM or a termination notice flushes the
newest state and exits 75. The final weights are bit-identical to an uninterrupted run
(``--reference`` prints that run's checksum). Needs the ``torch`` extra.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time

import torch

from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer
from spot_workflows.runtime.checkpoint.torch_state import restore_training_state, training_state

BATCH, BATCHES = 32, 10


class Trainer:
    def __init__(self, seed: int, steps: int) -> None:
        torch.manual_seed(seed)
        self.steps = steps
        self.model = torch.nn.Sequential(
            torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(64, 1)
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=25, gamma=0.8)
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(BATCH * BATCHES, 16, generator=g)
        self.data = torch.utils.data.TensorDataset(x, x.pow(2).sum(1, keepdim=True).sqrt())
        self.seed, self.step, self.epoch, self.batch = seed, 0, 0, 0

    def state(self) -> dict:
        return training_state(
            model=self.model,
            optimizer=self.opt,
            scheduler=self.sched,
            step=self.step,
            loader_position={"epoch": self.epoch, "batch": self.batch},
        )

    def restore(self, state: dict) -> None:
        progress = restore_training_state(
            state, model=self.model, optimizer=self.opt, scheduler=self.sched
        )
        self.step = progress.step
        self.epoch = progress.loader_position["epoch"]
        self.batch = progress.loader_position["batch"]

    def batches(self):
        """(x, y) from the current loader position on, across epochs."""
        while True:
            g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            loader = torch.utils.data.DataLoader(
                self.data, batch_size=BATCH, shuffle=True, generator=g
            )
            yield from itertools.islice(loader, self.batch, None)
            self.epoch, self.batch = self.epoch + 1, 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.batch += 1

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for p in self.model.parameters():
            digest.update(p.detach().numpy().tobytes())
        return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    ap.add_argument("--step-seconds", type=float, default=0.0, help="extra pause per step")
    ap.add_argument("--reference", action="store_true", help="no checkpoints; print checksum")
    args = ap.parse_args(argv)
    run = Trainer(args.seed, args.steps)
    if args.reference:
        for x, y in itertools.islice(run.batches(), args.steps):
            run.train_step(x, y)
        print(json.dumps({"checksum": run.checksum(), "step": run.step}))
        return 0

    with AsyncCheckpointer.from_env(every_steps=args.every, policy="skip") as ckpt:
        restored = ckpt.restore(map_location="cpu")
        if restored is not None:
            run.restore(restored.state)
        print(f"RESUME {run.step}" if restored else "START 0", flush=True)
        for x, y in run.batches():
            if run.step >= args.steps:
                break
            run.train_step(x, y)
            print(f"STEP {run.step}", flush=True)
            progress = run.step / args.steps
            if ckpt.stop_requested:
                report = ckpt.emergency_save(run.step, run.state, progress=progress)
                print(f"EMERGENCY {run.step} met_deadline={report.met_deadline}", flush=True)
                ckpt.exit_preempted()
            ckpt.maybe_save(run.step, run.state, progress=progress)
            if args.step_seconds:
                time.sleep(args.step_seconds)
        ckpt.flush()
        if ckpt.store.latest() is None or ckpt.store.latest().step != run.step:
            ckpt.save(run.step, run.state, progress=1.0).result()
    print(json.dumps({"checksum": run.checksum(), "step": run.step}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
