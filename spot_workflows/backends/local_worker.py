"""The local backend's per-job supervisor: ``python -m spot_workflows.backends.local_worker DIR``.

Runs in its own session so it outlives the process that submitted it (a crashed runner can
re-attach). It starts the job's command, records ``status.json`` (pid, start, exit code, end)
atomically, and stays alive through the market's SIGTERM so the exit code is never lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


CLAIM = "supervisor.claim"


def main(argv: list[str] | None = None) -> int:
    job_dir = Path((argv or sys.argv[1:])[0])
    try:  # exactly one supervisor per job, even if the market had to spawn a second one
        os.close(os.open(job_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return 0
    job = json.loads((job_dir / "job.json").read_text())
    # A handler (not SIG_IGN, which children would inherit) keeps the supervisor alive.
    signal.signal(signal.SIGTERM, lambda *_: None)
    env = dict(os.environ)
    env.update(job["env"])
    with open(job_dir / "output.log", "ab", buffering=0) as log:
        child = subprocess.Popen(
            job["command"], env=env, cwd=job.get("cwd") or None, stdout=log, stderr=log
        )
        write_json_atomic(
            job_dir / "status.json",
            {"supervisor_pid": os.getpid(), "pid": child.pid, "started_at": time.time()},
        )
        code = child.wait()
    status = json.loads((job_dir / "status.json").read_text())
    status.update({"exit_code": code if code >= 0 else 128 - code, "ended_at": time.time()})
    write_json_atomic(job_dir / "status.json", status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
