"""A progress-driven reclaim for end-to-end tests of sharded steps on the local backend.

Time-based reclaims miss the work on a loaded machine (the step may not have committed anything
yet, or may already be done); this reclaims the first launched spot attempt once ``shards``
shards are committed and a progress checkpoint exists, through ``LocalBackend.reclaim`` on the
shared state directory (the backend in the orchestrator sees it on its next tick).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from spot_workflows.backends.local import LocalBackend
from spot_workflows.runtime.store import CheckpointStore


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
