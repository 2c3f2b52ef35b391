"""Checkpointed fine-tune on spot capacity, with scheduled reclaims and escalation.

Runs on the local backend out of the box (real subprocesses, a simulated spot market)::

    python flows/spot_finetune.py

The training step (``spot_workflows.examples.toy_train``) checkpoints every ``every`` steps. The
market reclaims its first two spot attempts 2 s after their first checkpoint; each time the step
gets a termination notice, saves an emergency checkpoint and exits, and the next attempt resumes
from it. With ``preemption_budget=2`` spent, the third attempt runs on on-demand capacity. A
second task reads the final checkpoint and checks the weights are bit-identical to an
uninterrupted run. A flow-run retry re-attaches to the same step (same key, same ledger) and
returns at once if it already succeeded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, task

from spot_workflows.examples import toy_train
from spot_workflows.prefect import LocalBackendBlock, SpotPolicyBlock, SpotStepResult, spot_task
from spot_workflows.prefect.blocks import spot_workflows_home
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


@task
def verify_weights(*, result: SpotStepResult, steps: int, seed: int) -> dict:
    """Compare the final checkpoint with an uninterrupted reference run."""
    store = CheckpointStore(result.checkpoint_uri)
    latest = store.latest()
    if latest is None:
        raise RuntimeError(f"no checkpoint under {result.checkpoint_uri}")
    state = toy_train.load_checkpoint(store, latest)
    return {
        "final_step": state["step"],
        "checksum": toy_train.checksum(state),
        "matches_uninterrupted_run": toy_train.checksum(state) == toy_train.reference(steps, seed),
    }


@flow(name="spot-finetune", log_prints=True, retries=1)
def spot_finetune(
    steps: int = 400,
    every: int = 40,
    seed: int = 7,
    step_seconds: float = 0.03,
    reclaim_after_s: list[float] | None = None,
    preemption_budget: int = 2,
    workdir: str | None = None,
    state_dir: str | None = None,
    reclaim_after_checkpoint: bool = True,
) -> dict:
    """Fine-tune on spot; reclaimed twice by default, then escalated to on-demand.

    ``workdir`` holds the checkpoints (default ``$SPOT_WORKFLOWS_HOME/flows/spot-finetune``, else
    ``~/.spot-workflows/...``: stable, so a retried flow run finds its step's ledger and
    re-attaches). Each spot reclaim comes ``reclaim_after_s[n]`` seconds after the attempt's first
    new checkpoint (``reclaim_after_checkpoint``), so each resume has progress to resume from
    whatever the machine's load. ``state_dir`` is
    the local spot cloud's state directory; by default the machine's shared one
    (``$SPOT_WORKFLOWS_LOCAL_DIR``, else ``~/.spot-workflows/local``), whose daemon every flow run,
    worker and process uses, rather than a daemon per flow run.
    """
    default_root = spot_workflows_home() / "flows" / "spot-finetune"
    root = (Path(workdir).expanduser() if workdir else default_root).resolve()
    backend = LocalBackendBlock(
        state_dir=state_dir,
        checkpoint_root=f"file://{root / 'checkpoints'}",
        reclaim_after_s=[2.0, 2.0] if reclaim_after_s is None else reclaim_after_s,
        reclaim_after_checkpoint=reclaim_after_checkpoint,
        notice_window_s=2.0,
    )
    policy = SpotPolicyBlock(preemption_budget=preemption_budget, capacity_timeout_s=120)

    @spot_task(backend=backend, policy=policy, retries=1, poll_interval=0.2)
    def finetune(*, steps: int, every: int, seed: int, step_seconds: float) -> list[str]:
        return [
            sys.executable,
            "-m",
            "spot_workflows.examples.toy_train",
            f"--steps={steps}",
            f"--every={every}",
            f"--seed={seed}",
            f"--step-seconds={step_seconds}",
        ]

    result = finetune(steps=steps, every=every, seed=seed, step_seconds=step_seconds)
    check = verify_weights(result=result, steps=steps, seed=seed)
    summary = {
        "step_key": result.step_key,
        "checkpoint_uri": result.checkpoint_uri,
        "attempts": [
            {
                "capacity": a.capacity.value,
                "outcome": a.outcome.value if a.outcome else None,
                "resumed_from_step": a.resumed_from_step or 0,
            }
            for a in result.attempts
        ],
        "escalated": result.escalated,
        **check,
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    spot_finetune()
