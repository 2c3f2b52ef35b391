"""``spot-workflows demo``: the whole idea on this machine, with no cloud account.

A deterministic training step runs on the local backend's "spot" capacity; the simulated market
reclaims it twice (with a notice, so it saves an emergency checkpoint each time and resumes from
it), the preemption budget runs out, the step escalates to on-demand and finishes; the final
weights are compared with an uninterrupted reference run.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spot_workflows.backends.local import LocalBackend
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.cost import step_cost
from spot_workflows.core.outcomes import Attempt, Capacity, Outcome
from spot_workflows.core.summary import attempt_row
from spot_workflows.examples import toy_train
from spot_workflows.pricing import load_catalog
from spot_workflows.report import summary
from spot_workflows.runner import RunnerEvent, RunResult, StepRunner

_STEP = re.compile(rb"^(?:STEP|RESUME|START|EMERGENCY) (\d+)", re.M)


@dataclass(frozen=True)
class DemoConfig:
    steps: int = 400
    every: int = 50
    step_seconds: float = 0.01
    seed: int = 7
    reclaim_at_steps: tuple[int, ...] = (120, 240)
    """The n-th spot attempt is reclaimed once training passes this step (progress-driven, so the
    demo behaves the same on a fast laptop and a loaded CI machine)."""
    notice_window_s: float = 2.0
    preemption_budget: int = 2
    workdir: Path | None = None


def last_step_in_log(path: Path) -> int | None:
    """Last step the worker reported in its output log (``STEP n`` lines)."""
    try:
        found = _STEP.findall(path.read_bytes())
    except OSError:
        return None
    return int(found[-1]) if found else None


def attempts_report(result: RunResult, backend: LocalBackend) -> list[dict]:
    """Per attempt: capacity, outcome, resumed-from step, steps lost, seconds."""
    rows = []
    attempts: list[Attempt] = result.attempts
    for i, a in enumerate(attempts):
        reached = last_step_in_log(backend.log_path(a.job_id)) if a.job_id else None
        if reached is None and a.started_at is not None:
            reached = a.resumed_from_step or 0  # reclaimed before its first step
        nxt = attempts[i + 1] if i + 1 < len(attempts) else None
        lost = None
        if a.outcome is Outcome.PREEMPTED and nxt is not None and reached is not None:
            lost = max(0, reached - (nxt.resumed_from_step or 0))
        rows.append(
            {
                **attempt_row(a),
                "resumed_from_step": a.resumed_from_step or 0,
                "reached_step": reached,
                "steps_lost": lost,
            }
        )
    return rows


def _reclaiming_sleep(backend: LocalBackend, holder: list[StepRunner], at_steps: tuple[int, ...]):
    """The runner's sleep, which also lets the market reclaim the n-th spot attempt once the
    training log passes ``at_steps[n]`` (notice on the metadata endpoint, then SIGTERM)."""
    reclaimed: set[str] = set()

    def sleep(seconds: float) -> None:
        time.sleep(seconds)
        live = holder[0].ledger.live if holder else None
        if live is None or live.job_id is None or live.capacity is not Capacity.SPOT:
            return
        n = sum(1 for a in holder[0].ledger.attempts if a.capacity is Capacity.SPOT) - 1
        if n >= len(at_steps) or live.job_id in reclaimed:
            return
        reached = last_step_in_log(backend.log_path(live.job_id)) or 0
        if reached >= at_steps[n]:
            backend.reclaim(live.job_id)
            reclaimed.add(live.job_id)

    return sleep


def run_demo(
    config: DemoConfig, *, on_event: Callable[[RunnerEvent], None] | None = None, backend_cb=None
) -> dict:
    """Run the demo and return its JSON-able summary."""
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="spot-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spec = StepSpec(
        key="demo-train",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.toy_train",
            f"--steps={config.steps}",
            f"--every={config.every}",
            f"--seed={config.seed}",
            f"--step-seconds={config.step_seconds}",
        ],
        checkpoint_uri=f"file://{(workdir / 'checkpoints' / 'demo-train').resolve()}",
    )
    policy = SpotPolicy(preemption_budget=config.preemption_budget, capacity_timeout_s=60)
    started = time.time()
    # the demo's own local spot cloud (its state lives in the workdir): stopped when the demo
    # ends, however it ends, so nothing it started outlives it
    backend = LocalBackend(
        state_dir=workdir / "backend", notice_window_s=config.notice_window_s
    ).start()
    try:
        if backend_cb is not None:
            backend_cb(backend)
        holder: list[StepRunner] = []
        runner = StepRunner(
            spec=spec,
            backend=backend,
            policy=policy,
            poll_interval=0.1,
            on_event=on_event,
            sleep=_reclaiming_sleep(backend, holder, config.reclaim_at_steps),
        )
        holder.append(runner)
        result = runner.run()
        rows = attempts_report(result, backend)
        final_log = backend.log_path(result.attempts[-1].job_id).read_text()
    finally:
        backend.shutdown()
    final = re.findall(r'"checksum": "([0-9a-f]{64})"', final_log)
    reference = toy_train.reference(config.steps, config.seed)
    preempted = [r for r in rows if r["outcome"] == Outcome.PREEMPTED.value]
    cost = step_cost(spec.key, result.attempts, load_catalog(), now=time.time())
    return {
        "step_key": spec.key,
        "checkpoint_uri": spec.checkpoint_uri,
        "workdir": str(workdir),
        "attempts": rows,
        "preemptions": result.summary.preemptions,
        "steps_lost_total": sum(r["steps_lost"] or 0 for r in preempted),
        "escalated": result.escalated,
        "final_capacity": rows[-1]["capacity"],
        "final_checksum": final[-1] if final else None,
        "reference_checksum": reference,
        "checksums_match": bool(final) and final[-1] == reference,
        "wall_seconds": round(time.time() - started, 2),
        "cost": summary(cost),
    }
