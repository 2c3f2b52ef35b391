"""The local spot cloud's per-job supervisor: ``python -m spot_workflows.backends.local.worker DIR``.

Runs in its own session so it outlives both the process that submitted the job and the local
cloud daemon that spawned it (a restarted daemon re-adopts it). It starts the job's command,
records ``status.json`` (its own pid and start time, the command's pid, start, exit code, end)
atomically, and stays alive through the market's SIGTERM so the exit code is never lost. A
command that cannot be started (not found, not executable, a bad environment variable name) is
recorded as such, with the error, instead of leaving the job waiting forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spot_workflows.backends.local.jobs import (
    CLAIM,
    JOB,
    LOG,
    STATUS,
    pid_start_time,
    read_json,
    write_json_atomic,
)


def _start_error_code(exc: BaseException) -> int:
    if isinstance(exc, FileNotFoundError):
        return 127  # the shell's "command not found"
    if isinstance(exc, PermissionError):
        return 126  # the shell's "not executable"
    return 125


def main(argv: list[str] | None = None) -> int:
    job_dir = Path((argv or sys.argv[1:])[0])
    # Exactly one supervisor per job, even if the market had to spawn a second one: the claim
    # appears atomically with this pid in it (a hard link of a finished temp file), so the local
    # cloud never reads a claim without its pid.
    tmp = job_dir / f".{CLAIM}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, job_dir / CLAIM)
    except FileExistsError:
        return 0
    finally:
        tmp.unlink(missing_ok=True)
    job = read_json(job_dir / JOB) or {}
    # A handler (not SIG_IGN, which children would inherit) keeps the supervisor alive.
    signal.signal(signal.SIGTERM, lambda *_: None)
    env = dict(os.environ)
    env.update(job.get("env") or {})
    me = {"supervisor_pid": os.getpid(), "supervisor_start": pid_start_time(os.getpid())}
    with open(job_dir / LOG, "ab", buffering=0) as log:
        try:
            child = subprocess.Popen(
                job["command"], env=env, cwd=job.get("cwd") or None, stdout=log, stderr=log
            )
        except (OSError, ValueError, subprocess.SubprocessError, KeyError, TypeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.write(f"spot-workflows: could not start the command: {error}\n".encode())
            now = time.time()
            write_json_atomic(
                job_dir / STATUS,
                {
                    **me,
                    "started_at": now,
                    "exit_code": _start_error_code(exc),
                    "ended_at": now,
                    "start_error": error,
                },
            )
            return 0
        write_json_atomic(job_dir / STATUS, {**me, "pid": child.pid, "started_at": time.time()})
        code = child.wait()
    status = read_json(job_dir / STATUS) or dict(me)
    status.update({"exit_code": code if code >= 0 else 128 - code, "ended_at": time.time()})
    write_json_atomic(job_dir / STATUS, status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
