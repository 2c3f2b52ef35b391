"""A step that looks for spot capacity in several places at once (a spot pool).

Runs on the local backend out of the box (real subprocesses, one simulated spot market per
placement)::

    python flows/spot_pool.py

The block lists three placements: ``zone-a`` and ``zone-b`` (SPOT) and ``on-demand``. ``zone-a``
has no spot capacity (``markets``: no spot for a day); ``zone-b`` has. While the step waits for
spot it keeps a pending attempt in both zones (a pending Batch job costs nothing); ``zone-b``'s
starts, ``zone-a``'s is cancelled and recorded ``RACED`` (not a reclaim, not a failure), and only
``zone-b``'s job ever runs the step. On AWS list job queues (with their regions), on GCP regions
(with their zones): see docs/pools.md.
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

NO_SPOT_FOR_A_DAY = {"spot_unavailable": [[0.0, 86400.0]]}


@task
def verify_weights(*, result: SpotStepResult, steps: int, seed: int) -> bool:
    """The final checkpoint equals an uninterrupted run's."""
    store = CheckpointStore(result.checkpoint_uri)
    latest = store.latest()
    if latest is None:
        raise RuntimeError(f"no checkpoint under {result.checkpoint_uri}")
    state = toy_train.load_checkpoint(store, latest)
    return toy_train.checksum(state) == toy_train.reference(steps, seed)


@flow(name="spot-pool", log_prints=True, retries=1)
def spot_pool(
    steps: int = 150,
    every: int = 10,
    seed: int = 7,
    step_seconds: float = 0.03,
    workdir: str | None = None,
    state_dir: str | None = None,
) -> dict:
    """Race two spot zones; run where spot is. ``workdir`` holds the checkpoints (default
    ``$SPOT_WORKFLOWS_HOME/flows/spot-pool``); ``state_dir`` is the local spot cloud's."""
    default_root = spot_workflows_home() / "flows" / "spot-pool"
    root = (Path(workdir).expanduser() if workdir else default_root).resolve()
    backend = LocalBackendBlock(
        state_dir=state_dir,
        checkpoint_root=f"file://{root / 'checkpoints'}",
        placements=[
            {"name": "zone-a"},
            {"name": "zone-b"},
            {"name": "on-demand", "capacity": "ON_DEMAND"},
        ],
        markets={"zone-a": NO_SPOT_FOR_A_DAY},
    )
    policy = SpotPolicyBlock(capacity_timeout_s=300)

    @spot_task(backend=backend, policy=policy, retries=1, poll_interval=0.2)
    def train(*, steps: int, every: int, seed: int, step_seconds: float) -> list[str]:
        return [
            sys.executable,
            "-m",
            "spot_workflows.examples.toy_train",
            f"--steps={steps}",
            f"--every={every}",
            f"--seed={seed}",
            f"--step-seconds={step_seconds}",
        ]

    result = train(steps=steps, every=every, seed=seed, step_seconds=step_seconds)
    matches = verify_weights(result=result, steps=steps, seed=seed)
    summary = {
        "step_key": result.step_key,
        "checkpoint_uri": result.checkpoint_uri,
        "attempts": [
            {
                "placement": a.placement,
                "capacity": a.capacity.value,
                "outcome": a.outcome.value if a.outcome else None,
            }
            for a in result.attempts
        ],
        "matches_uninterrupted_run": matches,
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    spot_pool()
