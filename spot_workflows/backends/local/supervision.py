"""The local spot cloud's side of a job's supervisor (:mod:`.worker`), one process per job.

The daemon (:class:`~spot_workflows.backends.local.cloud.LocalCloud`) spawns the supervisor in
its own session, records a job lost when its supervisor died without recording an exit (or never
started the command), and signals the job's processes, never the supervisor itself, which stays
alive to record the exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from spot_workflows.backends.local import jobs as J


def spawn_supervisor(job_dir: Path) -> subprocess.Popen:
    """Start the supervisor of ``job_dir`` in a new session, detached from this process."""
    return subprocess.Popen(
        [sys.executable, "-m", "spot_workflows.backends.local.worker", str(job_dir)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def record_lost_supervisor(job_dir: Path, now: float, *, start_timeout_s: float) -> str | None:
    """If the job's supervisor died without recording an exit, or has not started the command
    within ``start_timeout_s`` of claiming the job (it is then killed), record the job's exit as
    lost in its status and say why; None while the supervisor is fine (or not claimed yet)."""
    status = J.read_json(job_dir / J.STATUS)
    if status is not None:
        if "exit_code" in status or J.alive(
            status.get("supervisor_pid"), status.get("supervisor_start")
        ):
            return None
        what = f"the job's supervisor (pid {status.get('supervisor_pid')}) died"
    else:
        try:
            pid = int((job_dir / J.CLAIM).read_text())
        except (OSError, ValueError):
            return None  # not claimed yet
        claimed = (job_dir / J.CLAIM).stat().st_mtime
        if J.alive(pid) and now - claimed < start_timeout_s:
            return None
        if J.alive(pid):
            what = f"the job's supervisor (pid {pid}) did not start the command in time"
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        else:
            what = f"the job's supervisor (pid {pid}) exited before starting the command"
        status = {"supervisor_pid": pid, "started_at": None}
    status.update({"exit_code": None, "ended_at": now, "lost": what})
    J.write_json_atomic(job_dir / J.STATUS, status)
    return what


def signal_job(job_dir: Path, sig: signal.Signals) -> None:
    """Signal every process of the job except its supervisor (which records the exit)."""
    status = J.read_json(job_dir / J.STATUS)
    if not status or "exit_code" in status or not status.get("supervisor_pid"):
        return
    supervisor = status["supervisor_pid"]
    for pid in J.session_pids(supervisor):
        if pid != supervisor:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
