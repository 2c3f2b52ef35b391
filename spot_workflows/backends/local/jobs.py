"""A local job on disk: one directory per job under ``STATE_DIR/jobs/``.

* ``job.json``: what was submitted (name, step key, attempt, capacity, command, env, timings) and
  what the market did with it (``launched_at``, ``reclaim_at``); written by the local cloud;
* ``supervisor.claim``: the supervisor's pid (exactly one supervisor per job);
* ``status.json``: written by the supervisor: its pid and start time, the command's start, exit
  code and end (or ``start_error``); the local cloud adds ``lost`` for a supervisor that died;
* ``reclaim.json`` / ``cancel.json``: a reclaim in progress / a cancel request;
* ``notice.json``: the worker read its interruption notice on the metadata endpoint;
* ``output.log``: the command's stdout and stderr.

Every file is replaced atomically, so any process may read them at any time.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from spot_workflows.core.classify import classify_local
from spot_workflows.core.outcomes import AttemptState, Observation
from spot_workflows.runtime.store.checkpoint_store import LATEST, CheckpointStore

JOB, STATUS, RECLAIM, CANCEL = "job.json", "status.json", "reclaim.json", "cancel.json"
CLAIM, NOTICE, LOG = "supervisor.claim", "notice.json", "output.log"

_EXIT_HINTS = {127: "command not found", 126: "command not executable"}


def read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def pid_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc), or None if it is gone:
    a pid plus its start time names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def alive(pid: int | None, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (and, with ``start_time``, is the process that started then)."""
    if not pid:
        return False
    now = pid_start_time(pid)
    if now is None:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":
            return False  # exited, not yet reaped
    return start_time is None or now == start_time


def session_pids(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` (Linux /proc): a supervisor's whole job tree."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def checkpoint_step(job: dict) -> int | None:
    """The step of the job's newest checkpoint (its ``latest.json``), or None."""
    uri = (job.get("env") or {}).get("SPOT_CHECKPOINT_URI")
    if not uri:
        return None
    try:
        raw = CheckpointStore(uri, keep_last=1).read(LATEST)
        return int(json.loads(raw)["step"]) if raw else None
    except Exception:  # no checkpoint yet, or one being written: look again next time
        return None


def is_done(job_dir: Path) -> bool:
    status = read_json(job_dir / STATUS)
    if status is not None and "exit_code" in status:
        return True
    job = read_json(job_dir / JOB) or {}
    return (job_dir / CANCEL).exists() and "launched_at" not in job


def _exit_reason(code: int, status: dict, log: Path) -> str:
    if status.get("start_error"):
        return f"could not start the command: {status['start_error']} (log: {log})"
    if status.get("lost"):
        return f"{status['lost']} (log: {log})"
    hint = _EXIT_HINTS.get(code)
    return f"exit code {code}" + (f" ({hint})" if hint else "") + f"; log: {log}"


def observe(job_dir: Path) -> Observation:
    """The job as the runner sees it: pending, running, or done with a classified outcome."""
    job = read_json(job_dir / JOB) or {}
    status = read_json(job_dir / STATUS) or {}
    reclaim = read_json(job_dir / RECLAIM)
    cancel = read_json(job_dir / CANCEL)
    base = {
        "job_id": job.get("job_id", job_dir.name),
        "instance_id": job.get("instance_id"),
        "instance_type": "local",
        "zone": job.get("zone", "local"),
        "started_at": status.get("started_at"),
    }
    if "exit_code" in status:
        code = status["exit_code"]
        lost = bool(status.get("lost"))
        outcome = classify_local(
            None if lost else code, reclaimed=reclaim is not None, cancelled=bool(cancel)
        )
        if reclaim is not None and code != 0:
            reason = f"Host local (instance {job.get('instance_id')}) terminated."
        elif cancel:
            reason = cancel.get("reason")
        elif code == 0:
            reason = "exit code 0"
        else:
            reason = _exit_reason(code, status, job_dir / LOG)
        return Observation(
            state=AttemptState.DONE,
            outcome=outcome,
            exit_code=None if lost else code,
            ended_at=status.get("ended_at"),
            reason=reason,
            **base,
        )
    if cancel and "launched_at" not in job:
        return Observation(
            state=AttemptState.DONE,
            outcome=classify_local(None, cancelled=True),
            reason=cancel.get("reason"),
            ended_at=cancel.get("at"),
            **base,
        )
    state = AttemptState.RUNNING if "started_at" in status else AttemptState.PENDING
    return Observation(state=state, **base)


def summary(job_dir: Path) -> dict:
    """One row of ``spot-workflows local jobs --json``."""
    job = read_json(job_dir / JOB) or {}
    obs = observe(job_dir)
    env = job.get("env") or {}
    return {
        "job_id": obs.job_id,
        "job_name": job.get("job_name"),
        "step_key": job.get("step_key") or env.get("SPOT_STEP_KEY"),
        "attempt": job.get("attempt"),
        "capacity": job.get("capacity"),
        "placement": job.get("placement"),
        "state": obs.state.value,
        "outcome": obs.outcome.value if obs.outcome else None,
        "exit_code": obs.exit_code,
        "reason": obs.reason,
        "reclaimed": (job_dir / RECLAIM).exists(),
        "notice_served": (job_dir / NOTICE).exists(),
        "submitted_at": job.get("submitted_at"),
        "started_at": obs.started_at,
        "ended_at": obs.ended_at,
        "log": str(job_dir / LOG),
    }
