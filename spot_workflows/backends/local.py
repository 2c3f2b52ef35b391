"""The local backend: real subprocesses, a simulated spot market, a local metadata endpoint.

Each attempt runs as a real process tree under a supervisor (``local_worker``) in its own session,
with the DESIGN §4 environment and ``spot-run`` wrapped around the command. A background thread
plays the market: a spot attempt waits while spot capacity is unavailable (like a Batch job stuck
RUNNABLE); when the market reclaims it, the notice appears on the metadata endpoint (AWS IMDSv2 and
GCE paths), SIGTERM follows after ``notice_window_s`` and SIGKILL after ``grace_s`` more.
On-demand attempts are never reclaimed.

All job state lives under ``state_dir`` so a new backend on the same directory (a runner that
crashed and came back) sees and re-attaches to the same jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from spot_workflows.backends.base import attempt_env
from spot_workflows.backends.local_events import append_event
from spot_workflows.backends.local_market import NeverReclaimed, SpotMarket
from spot_workflows.backends.local_metadata import LocalMetadataServer
from spot_workflows.backends.local_worker import CLAIM, write_json_atomic
from spot_workflows.config import StepSpec
from spot_workflows.core.classify import classify_local
from spot_workflows.core.outcomes import AttemptState, Capacity, Observation
from spot_workflows.errors import BackendError, NotFoundError

RELAUNCH_AFTER_S = 10.0
"""Seconds a launched job may go without a supervisor claiming it before the market spawns
another (a runner killed mid-launch); supervisors normally claim within a second."""


def _session_pids(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` (Linux /proc); the supervisor's whole job tree."""
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


class LocalBackend:
    """Backend that runs attempts on this machine. Use as a context manager."""

    name = "local"
    stop_latency_s = 0.5  # cancel -> SIGTERM -> exit observed, on this machine

    def __init__(
        self,
        *,
        state_dir: str | Path,
        market: SpotMarket | None = None,
        notice_window_s: float = 2.0,
        grace_s: float = 5.0,
        notice_poll_s: float = 0.2,
        tick_s: float = 0.05,
        wrap: bool = True,
        clock: Callable[[], float] = time.time,
        events_path: str | Path | None = None,
    ) -> None:
        if notice_window_s < 0 or grace_s < 0:
            raise BackendError("notice_window_s and grace_s must be >= 0 seconds")
        self.state_dir = Path(state_dir)
        (self.state_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self.market = market or NeverReclaimed()
        self.notice_window_s = notice_window_s
        self.grace_s = grace_s
        self.notice_poll_s = notice_poll_s
        self.tick_s = tick_s
        self.wrap = wrap
        self.clock = clock
        self.metadata = LocalMetadataServer()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spot_launched = 0
        self.events: list[dict] = []  # market events: notice / sigterm / sigkill, for reports
        self.events_path = Path(events_path) if events_path is not None else None
        """Optional JSON-lines copy of the market events (see ``local_events``), for watchers."""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LocalBackend:
        if self._thread is None:
            self.metadata.start()
            self.market.t0 = self.clock()
            self._thread = threading.Thread(
                target=self._loop, name="local-spot-market", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.metadata.stop()

    def __enter__(self) -> LocalBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Backend protocol --------------------------------------------------------------------
    def submit(self, spec: StepSpec, *, job_name: str, attempt: int, capacity: Capacity) -> str:
        self.start()
        job_id = f"local-{secrets.token_hex(4)}"
        instance_id = f"i-{secrets.token_hex(8)}"
        job_dir = self.state_dir / "jobs" / job_id
        job_dir.mkdir(parents=True)
        self.metadata.add_instance(instance_id)
        endpoint = self.metadata.endpoint_for(instance_id)
        env = attempt_env(
            spec,
            attempt=attempt,
            capacity=capacity,
            extra={
                "SPOT_NOTICE_SOURCE": "local",
                "SPOT_NOTICE_POLL_S": str(self.notice_poll_s),
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint,
                "GCE_METADATA_HOST": endpoint.removeprefix("http://"),
                "PYTHONUNBUFFERED": "1",
            },
        )
        command = list(spec.command)
        if self.wrap:
            command = [sys.executable, "-m", "spot_workflows.runtime.entrypoint", "--", *command]
        job = {
            "job_id": job_id,
            "job_name": job_name,
            "capacity": capacity.value,
            "instance_id": instance_id,
            "command": command,
            "env": env,
            "submitted_at": self.clock(),
        }
        write_json_atomic(job_dir / "job.json", job)
        return job_id

    def describe(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        out = {}
        for job_id in job_ids:
            job_dir = self.state_dir / "jobs" / job_id
            if (job_dir / "job.json").exists():
                out[job_id] = self._observe(job_dir)
        return out

    def cancel(self, job_id: str, *, reason: str) -> None:
        job_dir = self.state_dir / "jobs" / job_id
        if not (job_dir / "job.json").exists():
            raise NotFoundError(f"local job {job_id} does not exist under {self.state_dir}")
        with self._lock:
            if not (job_dir / "cancel.json").exists():
                write_json_atomic(job_dir / "cancel.json", {"reason": reason, "at": self.clock()})
            self._signal_job(job_dir, signal.SIGTERM)

    def find(self, job_name: str) -> str | None:
        for job_dir in sorted((self.state_dir / "jobs").iterdir()):
            job = _read(job_dir / "job.json")
            if job and job.get("job_name") == job_name:
                return job["job_id"]
        return None

    def reclaim(self, job_id: str) -> None:
        """Reclaim a running spot attempt now (notice, then SIGTERM/SIGKILL as configured):
        the local equivalent of an injected ``Host EC2 ... terminated``."""
        job_dir = self.state_dir / "jobs" / job_id
        with self._lock:
            job = _read(job_dir / "job.json")
            if job is None or job["capacity"] != Capacity.SPOT.value or "launched_at" not in job:
                raise BackendError(f"local job {job_id} is not a launched spot attempt")
            job["reclaim_at"] = self.clock()
            write_json_atomic(job_dir / "job.json", job)

    def log_path(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id / "output.log"

    # -- observation ---------------------------------------------------------------------------
    def _observe(self, job_dir: Path) -> Observation:
        job = _read(job_dir / "job.json") or {}
        status = _read(job_dir / "status.json") or {}
        reclaim = _read(job_dir / "reclaim.json")
        cancel = _read(job_dir / "cancel.json")
        base = {
            "job_id": job["job_id"],
            "instance_id": job.get("instance_id"),
            "instance_type": "local",
            "zone": "local",
            "started_at": status.get("started_at"),
        }
        if "exit_code" in status:
            code = status["exit_code"]
            outcome = classify_local(code, reclaimed=reclaim is not None, cancelled=bool(cancel))
            reason = (
                f"Host local (instance {job.get('instance_id')}) terminated."
                if reclaim
                else (cancel or {}).get("reason") or f"exit code {code}"
            )
            return Observation(
                state=AttemptState.DONE,
                outcome=outcome,
                exit_code=code,
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

    # -- the market --------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self._tick(self.clock())
            except Exception as exc:  # the market must never die silently
                self.events.append({"event": "market-error", "error": repr(exc)})

    def _tick(self, now: float) -> None:
        with self._lock:
            for job_dir in sorted((self.state_dir / "jobs").iterdir()):
                job = _read(job_dir / "job.json")
                if not job or (job_dir / "status.json").exists() and _done(job_dir):
                    continue
                if "launched_at" not in job:
                    self._maybe_launch(job_dir, job, now)
                else:
                    self._maybe_relaunch(job_dir, job, now)
                    self._maybe_reclaim(job_dir, job, now)

    def _maybe_launch(self, job_dir: Path, job: dict, now: float) -> None:
        if (job_dir / "cancel.json").exists():
            return
        spot = job["capacity"] == Capacity.SPOT.value
        if spot and not self.market.available(now):
            return
        job["launched_at"] = now
        if spot:
            job["reclaim_at"] = self.market.reclaim_at(self._spot_launched, now)
            self._spot_launched += 1
        write_json_atomic(job_dir / "job.json", job)  # before spawning: never launch twice
        self._spawn(job_dir)

    def _maybe_relaunch(self, job_dir: Path, job: dict, now: float) -> None:
        """A runner killed between marking a job launched and spawning its supervisor left the
        job with no process: spawn one again. The supervisor's exclusive claim file makes a
        second supervisor (the first was only slow to start) exit without running anything."""
        if any((job_dir / name).exists() for name in (CLAIM, "status.json", "cancel.json")):
            return
        if now - job.get("relaunched_at", job["launched_at"]) < RELAUNCH_AFTER_S:
            return
        job["relaunched_at"] = now
        write_json_atomic(job_dir / "job.json", job)
        self._spawn(job_dir)

    def _spawn(self, job_dir: Path) -> None:
        subprocess.Popen(
            [sys.executable, "-m", "spot_workflows.backends.local_worker", str(job_dir)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _maybe_reclaim(self, job_dir: Path, job: dict, now: float) -> None:
        reclaim_at = job.get("reclaim_at")
        cancel = _read(job_dir / "cancel.json")
        if cancel is not None:
            if now >= cancel["at"] + self.grace_s:
                self._signal_job(job_dir, signal.SIGKILL)
            return
        if reclaim_at is None or now < reclaim_at or not (job_dir / "status.json").exists():
            return
        reclaim = _read(job_dir / "reclaim.json")
        if reclaim is None:
            deadline = reclaim_at + self.notice_window_s
            reclaim = {"notice_at": now, "deadline": deadline, "stage": "notice"}
            if self.notice_window_s > 0:
                when = datetime.fromtimestamp(deadline, tz=UTC)
                self.metadata.set_interruption(job["instance_id"], deadline=when)
                self.metadata.set_gce_preempted(job["instance_id"], True)
            write_json_atomic(job_dir / "reclaim.json", reclaim)
            self._record(job, "notice", now, deadline=deadline)
        if reclaim["stage"] == "notice" and now >= reclaim["deadline"]:
            reclaim["stage"] = "sigterm"
            write_json_atomic(job_dir / "reclaim.json", reclaim)
            sig = signal.SIGTERM if self.grace_s > 0 else signal.SIGKILL
            self._signal_job(job_dir, sig)
            self._record(job, sig.name.lower(), now)
        elif reclaim["stage"] == "sigterm" and now >= reclaim["deadline"] + self.grace_s:
            reclaim["stage"] = "sigkill"
            write_json_atomic(job_dir / "reclaim.json", reclaim)
            self._signal_job(job_dir, signal.SIGKILL)
            self._record(job, "sigkill", now)

    def _record(self, job: dict, event: str, now: float, **extra: object) -> None:
        self.events.append({"event": event, "job_id": job["job_id"], "at": now})
        if self.events_path is not None:
            doc = {
                "event": event,
                "at": now,
                "job_id": job["job_id"],
                "job_name": job.get("job_name"),
                "step_key": job.get("env", {}).get("SPOT_STEP_KEY"),
                "capacity": job.get("capacity"),
                "instance_id": job.get("instance_id"),
                **extra,
            }
            try:
                append_event(self.events_path, doc)
            except OSError as exc:  # watchers lose one event; the market itself goes on
                self.events.append({"event": "events-file-error", "error": repr(exc)})

    def _signal_job(self, job_dir: Path, sig: signal.Signals) -> None:
        """Signal every process of the job except its supervisor (which records the exit)."""
        status = _read(job_dir / "status.json")
        if not status or "exit_code" in status:
            return
        supervisor = status["supervisor_pid"]
        for pid in _session_pids(supervisor):
            if pid != supervisor:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _done(job_dir: Path) -> bool:
    status = _read(job_dir / "status.json")
    return bool(status) and "exit_code" in status
