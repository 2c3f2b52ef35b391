"""Progress-driven reclaims for end-to-end tests on the local backend.

Time-based reclaims miss the work on a loaded machine (the step may not have started training or
committed anything yet, or may already be done). These reclaim through ``LocalBackend.reclaim``
on the shared state directory (the backend in the orchestrator sees it on its next tick, and the
worker gets the market's notice first):

* ``reclaim_after_shards``: the first launched spot attempt of a sharded step, once ``shards``
  shards are committed and a progress checkpoint exists;
* ``reclaim_after_steps``: the n-th launched spot attempt of a ``toy_train`` step once its log
  shows training step ``at_steps[n]``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from spot_workflows.backends.local import LocalBackend
from spot_workflows.demo import last_step_in_log
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


def _launched_spot_jobs(state_root: Path) -> list[tuple[Path, dict]]:
    jobs = []
    for path in state_root.glob("**/jobs/*/job.json"):
        job = json.loads(path.read_text())
        if "launched_at" in job and job.get("capacity") == "SPOT":
            jobs.append((path.parent.parent.parent, job))
    return jobs


def reclaim_after_shards(
    state_root: Path, checkpoint_root: Path, *, shards: int, timeout_s: float = 120.0
) -> dict:
    """Start the watcher; the returned dict gets ``job_id`` once it reclaimed (``error`` if it
    failed), so a test can tell "not reclaimed" from "reclaimed but not resumed"."""
    done: dict = {}

    def watch() -> None:
        deadline = time.time() + timeout_s
        try:
            while time.time() < deadline:
                markers = list(Path(checkpoint_root).glob("**/shards/done/*.json"))
                jobs = _launched_spot_jobs(Path(state_root))
                if len(markers) >= shards and jobs:
                    uri = f"file://{markers[0].parent.parent.parent}"
                    if CheckpointStore(uri).latest() is not None:
                        state_dir, job = jobs[0]
                        LocalBackend(state_dir=state_dir).reclaim(job["job_id"])
                        done["job_id"] = job["job_id"]
                        return
                time.sleep(0.05)
            done["error"] = f"timed out: {len(markers)} shards done, {len(jobs)} spot jobs"
        except Exception as exc:  # reported through the dict, asserted by the test
            done["error"] = repr(exc)

    threading.Thread(target=watch, daemon=True).start()
    return done


def reclaim_after_steps(state_root: Path, at_steps: list[int], *, timeout_s: float = 180.0) -> dict:
    """Start the watcher; the returned dict gets ``job_ids`` (those reclaimed, in order) and
    ``error`` if it could not reclaim them all."""
    done: dict = {"job_ids": []}

    def watch() -> None:
        deadline = time.time() + timeout_s
        try:
            while time.time() < deadline and len(done["job_ids"]) < len(at_steps):
                jobs = sorted(
                    _launched_spot_jobs(Path(state_root)), key=lambda j: j[1]["launched_at"]
                )
                n = len(done["job_ids"])
                if len(jobs) > n:
                    state_dir, job = jobs[n]
                    backend = LocalBackend(state_dir=state_dir)
                    reached = last_step_in_log(backend.log_path(job["job_id"])) or 0
                    if reached >= at_steps[n]:
                        backend.reclaim(job["job_id"])
                        done["job_ids"].append(job["job_id"])
                time.sleep(0.02)
            if len(done["job_ids"]) < len(at_steps):
                done["error"] = f"timed out after reclaiming {done['job_ids']}"
        except Exception as exc:  # reported through the dict, asserted by the test
            done["error"] = repr(exc)

    threading.Thread(target=watch, daemon=True).start()
    return done
