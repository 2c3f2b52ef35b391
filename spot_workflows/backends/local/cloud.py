"""The local spot cloud's state machine: jobs, spot markets per step key, metadata endpoints.

:class:`LocalCloud` is what the daemon (:mod:`.daemon`) serves; it owns every job under
``STATE_DIR/jobs/`` and plays the market: a spot job waits while its step's market has no spot
capacity (like a Batch job stuck RUNNABLE); when the market reclaims it, the notice appears on
the job's metadata endpoint (AWS IMDSv2 and GCE paths, served by this process for as long as the
job lives), SIGTERM follows after the job's notice window and SIGKILL after its grace period.
On-demand jobs are never reclaimed. Each job runs under its own supervisor process, which
:mod:`.supervision` spawns, watches and signals on the daemon's behalf.

Markets are per step key: "reclaim the first two spot attempts" means the first two of *each*
step, whichever process submitted them. A job submitted to a named placement (``"placement"``)
runs in that placement's own market of the step (key ``STEP@PLACEMENT``): its own schedule, its own
availability and its own count of launched attempts, so a reclaim or an outage in one market never
touches jobs in another. Their state (first seen, spot attempts launched) is kept in
``markets.json`` so a restarted daemon goes on where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from spot_workflows.backends.local import jobs as J
from spot_workflows.backends.local.events import append_event
from spot_workflows.backends.local.market import market_from_spec
from spot_workflows.backends.local.metadata import LocalMetadataServer
from spot_workflows.backends.local.supervision import (
    record_lost_supervisor,
    signal_job,
    spawn_supervisor,
)
from spot_workflows.core.outcomes import Capacity, Observation
from spot_workflows.errors import BackendError, ConfigError, NotFoundError

RELAUNCH_AFTER_S = 10.0
"""Seconds a launched job may go without a supervisor claiming it before it is spawned again (the
daemon was killed between marking it launched and spawning it)."""
START_TIMEOUT_S = 30.0
"""Seconds a claimed job may go without its supervisor reporting the command started."""
EVENTS_FILE = "events.jsonl"


class LocalCloud:
    """Jobs, markets and metadata endpoints of one state directory (thread-safe)."""

    def __init__(self, state_dir: Path, *, metadata_port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.state_dir / EVENTS_FILE
        self._lock = threading.RLock()
        self._live: set[str] = set()
        self._names: dict[str, str] = {}  # job name -> job id: a name is submitted once
        self._children: list[subprocess.Popen] = []
        self._markets: dict[str, dict] = _read_markets(self.state_dir / "markets.json")
        self.metadata = LocalMetadataServer(port=metadata_port)
        self.last_activity = time.time()
        self.wakeup = threading.Event()  # set when there is something to do at once

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalCloud:
        try:
            self.metadata.start()
        except OSError:  # the previous daemon's port is taken: live jobs lose their endpoint
            self.metadata = LocalMetadataServer()
            self.metadata.start()
        self.adopt()
        return self

    def adopt(self) -> None:
        """Take over the jobs of a previous daemon: still-running ones keep running (their
        endpoint comes back); a supervisor that died while nobody watched is recorded lost."""
        with self._lock:
            for job_dir in sorted(self.jobs_dir.iterdir()):
                job = J.read_json(job_dir / J.JOB) or {}
                if job.get("job_name"):
                    self._names.setdefault(job["job_name"], job_dir.name)
                if not job or J.is_done(job_dir):
                    continue
                self._live.add(job_dir.name)
                if job.get("instance_id"):
                    self.metadata.add_instance(job["instance_id"])
                    reclaim = J.read_json(job_dir / J.RECLAIM)
                    if reclaim is not None:
                        self._serve_notice(job, reclaim["deadline"])
                self._check_supervisor(job_dir, job, time.time())

    def close(self) -> None:
        self.metadata.stop()

    # -- API ---------------------------------------------------------------------------------
    def submit(self, doc: dict) -> str:
        """Create a job; a job name already submitted returns that job (submitting is
        idempotent per name, so two runners of one attempt never start two jobs)."""
        for field in ("job_name", "command", "capacity", "env"):
            if field not in doc:
                raise ConfigError(f"a local job needs {field!r}")
        if doc["capacity"] not in (Capacity.SPOT.value, Capacity.ON_DEMAND.value):
            raise ConfigError(f"capacity {doc['capacity']!r} must be SPOT or ON_DEMAND")
        market_from_spec(doc.get("market") or {})  # reject a malformed market now
        placement = doc.get("placement")
        if placement is not None and (not isinstance(placement, str) or not placement.strip()):
            raise ConfigError(f"placement {placement!r} must be a non-empty placement name")
        with self._lock:
            existing = self._names.get(doc["job_name"])
            if existing is not None:
                return existing
        job_id = f"local-{secrets.token_hex(4)}"
        instance_id = f"i-{secrets.token_hex(8)}"
        endpoint = self.metadata.endpoint_for(instance_id)
        env = {
            **doc["env"],
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint,
            "GCE_METADATA_HOST": endpoint.removeprefix("http://"),
        }
        step_key = doc.get("step_key") or doc["env"].get("SPOT_STEP_KEY") or doc["job_name"]
        job = {
            **doc,
            "job_id": job_id,
            "instance_id": instance_id,
            "env": env,
            "step_key": step_key,
            "market_key": market_key(step_key, placement),
            "submitted_at": time.time(),
        }
        with self._lock:
            existing = self._names.get(doc["job_name"])
            if existing is not None:
                return existing
            self._names[doc["job_name"]] = job_id
            job_dir = self.jobs_dir / job_id
            job_dir.mkdir()
            self.metadata.add_instance(instance_id)
            J.write_json_atomic(job_dir / J.JOB, job)
            self._live.add(job_id)
        self.wakeup.set()
        return job_id

    def describe(self, job_ids: list[str]) -> dict[str, Observation]:
        return {
            job_id: J.observe(self.jobs_dir / job_id)
            for job_id in job_ids
            if _safe_id(job_id) and (self.jobs_dir / job_id / J.JOB).exists()
        }

    def cancel(self, job_id: str, *, reason: str) -> None:
        job_dir = self._job_dir(job_id)
        with self._lock:
            if J.is_done(job_dir):
                return  # already over: a late cancel changes nothing
            if not (job_dir / J.CANCEL).exists():
                J.write_json_atomic(job_dir / J.CANCEL, {"reason": reason, "at": time.time()})
            signal_job(job_dir, signal.SIGTERM)
        self.wakeup.set()

    def find(self, job_name: str) -> str | None:
        with self._lock:
            return self._names.get(job_name)

    def reclaim(self, job_id: str) -> None:
        """Reclaim a running spot job now (notice, then SIGTERM/SIGKILL)."""
        job_dir = self._job_dir(job_id)
        with self._lock:
            job = J.read_json(job_dir / J.JOB) or {}
            if job.get("capacity") != Capacity.SPOT.value or "launched_at" not in job:
                raise BackendError(f"local job {job_id} is not a launched spot attempt")
            job["reclaim_at"] = time.time()
            J.write_json_atomic(job_dir / J.JOB, job)
        self.wakeup.set()

    def spot_available(self, step_key: str, market: dict, placement: str | None = None) -> bool:
        """Whether the market of ``step_key`` (in ``placement``, when named) has spot now."""
        with self._lock:
            state = self._market_state(market_key(step_key, placement), market)
            return market_from_spec(state["spec"]).available(max(0.0, time.time() - state["t0"]))

    def jobs(self) -> list[dict]:
        return [J.summary(d) for d in sorted(self.jobs_dir.iterdir()) if (d / J.JOB).exists()]

    @property
    def live_jobs(self) -> int:
        with self._lock:
            return len(self._live)

    def stop_all(self, *, reason: str, grace_s: float = 5.0) -> int:
        """Cancel every live job (SIGTERM, SIGKILL after ``grace_s``) and wait, bounded, until
        each has an exit recorded. Returns how many jobs were stopped."""
        with self._lock:
            live = sorted(self._live)
            for job_id in live:
                self.cancel(job_id, reason=reason)
        deadline = time.time() + grace_s + 5.0
        while time.time() < deadline:
            self.tick(time.time())
            with self._lock:
                if not self._live:
                    break
            time.sleep(0.05)
        return len(live)

    # -- the market ------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._children = [c for c in self._children if c.poll() is None]  # reap supervisors
        with self._lock:
            for job_id in sorted(self._live):
                job_dir = self.jobs_dir / job_id
                job = J.read_json(job_dir / J.JOB)
                if job is None:
                    self._live.discard(job_id)
                    continue
                if "launched_at" not in job:
                    self._maybe_launch(job_dir, job, now)
                else:
                    self._maybe_relaunch(job_dir, job, now)
                    self._check_supervisor(job_dir, job, now)
                    self._arm_after_checkpoint(job_dir, job, now)
                    self._maybe_reclaim(job_dir, job, now)
                    self._note_notice(job_dir, job)
                if J.is_done(job_dir):
                    self._live.discard(job_id)
                    self.metadata.remove_instance(job.get("instance_id") or "-")

    def _market_state(self, key: str, spec: dict) -> dict:
        """The market ``key`` (a step key, or ``STEP@PLACEMENT``), created when first seen."""
        state = self._markets.get(key)
        if state is None or state["spec"] != spec:
            launched = state["launched"] if state is not None else 0
            t0 = state["t0"] if state is not None else time.time()
            state = {"spec": spec, "t0": t0, "launched": launched}
            self._markets[key] = state
            self._save_markets()
        return state

    def _save_markets(self) -> None:
        J.write_json_atomic(self.state_dir / "markets.json", self._markets)

    def _maybe_launch(self, job_dir: Path, job: dict, now: float) -> None:
        if (job_dir / J.CANCEL).exists():
            return
        spot = job["capacity"] == Capacity.SPOT.value
        if spot:
            key = job.get("market_key") or job["step_key"]  # jobs of an older daemon: no key
            state = self._market_state(key, job.get("market") or {"kind": "never"})
            market = market_from_spec(state["spec"])
            if not market.available(max(0.0, now - state["t0"])):
                return
            reclaim = market.reclaim_at(state["launched"], max(0.0, now - state["t0"]))
            job["reclaim_at"] = None if reclaim is None else reclaim + state["t0"]
            if reclaim is not None and getattr(market, "after_checkpoint", False):
                # counted from the attempt's first new checkpoint (see _arm_after_checkpoint)
                job["reclaim_after_checkpoint_s"] = reclaim - (max(0.0, now - state["t0"]))
                job["baseline_step"] = J.checkpoint_step(job)
                job["reclaim_at"] = None
            job["market_attempt"] = state["launched"]
            state["launched"] += 1
            self._save_markets()
        job["launched_at"] = now
        J.write_json_atomic(job_dir / J.JOB, job)  # before spawning: never launch twice
        self._spawn(job_dir)

    def _maybe_relaunch(self, job_dir: Path, job: dict, now: float) -> None:
        """Launched (on disk) but no supervisor ever claimed it: spawn one again. The claim
        file makes a second supervisor (the first was only slow) exit at once."""
        if any((job_dir / n).exists() for n in (J.CLAIM, J.STATUS, J.CANCEL)):
            return
        if now - job.get("relaunched_at", job["launched_at"]) < RELAUNCH_AFTER_S:
            return
        job["relaunched_at"] = now
        J.write_json_atomic(job_dir / J.JOB, job)
        self._spawn(job_dir)

    def _arm_after_checkpoint(self, job_dir: Path, job: dict, now: float) -> None:
        """For ``after_checkpoint`` markets: once the attempt wrote its first checkpoint, set
        its reclaim time (checked a few times a second)."""
        delay = job.get("reclaim_after_checkpoint_s")
        if delay is None or job.get("reclaim_at") is not None:
            return
        if now - job.get("checkpoint_checked_at", 0.0) < 0.25:
            return
        job["checkpoint_checked_at"] = now
        step = J.checkpoint_step(job)
        if step is not None and step != job.get("baseline_step"):
            job["reclaim_at"] = now + float(delay)
            J.write_json_atomic(job_dir / J.JOB, job)

    def _check_supervisor(self, job_dir: Path, job: dict, now: float) -> None:
        """A supervisor that died without recording an exit (killed, or crashed before it
        started the command): record the job as lost, so it is never waited on forever."""
        what = record_lost_supervisor(job_dir, now, start_timeout_s=START_TIMEOUT_S)
        if what is not None:
            self._record(job, "lost", now, reason=what)

    def _spawn(self, job_dir: Path) -> None:
        self._children.append(spawn_supervisor(job_dir))

    def _maybe_reclaim(self, job_dir: Path, job: dict, now: float) -> None:
        grace = float(job.get("grace_s", 5.0))
        cancel = J.read_json(job_dir / J.CANCEL)
        if cancel is not None:
            if now >= cancel["at"] + grace:
                signal_job(job_dir, signal.SIGKILL)
            return
        reclaim_at = job.get("reclaim_at")
        if reclaim_at is None or now < reclaim_at or not (job_dir / J.STATUS).exists():
            return
        window = float(job.get("notice_window_s", 2.0))
        reclaim = J.read_json(job_dir / J.RECLAIM)
        if reclaim is None:
            deadline = now + window
            reclaim = {"notice_at": now, "deadline": deadline, "stage": "notice"}
            if window > 0:
                self._serve_notice(job, deadline)
            J.write_json_atomic(job_dir / J.RECLAIM, reclaim)
            self._record(job, "notice", now, deadline=deadline)
        if reclaim["stage"] == "notice" and now >= reclaim["deadline"]:
            reclaim["stage"] = "sigterm"
            J.write_json_atomic(job_dir / J.RECLAIM, reclaim)
            sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
            signal_job(job_dir, sig)
            self._record(job, sig.name.lower(), now)
        elif reclaim["stage"] == "sigterm" and now >= reclaim["deadline"] + grace:
            reclaim["stage"] = "sigkill"
            J.write_json_atomic(job_dir / J.RECLAIM, reclaim)
            signal_job(job_dir, signal.SIGKILL)
            self._record(job, "sigkill", now)

    def _serve_notice(self, job: dict, deadline: float) -> None:
        when = datetime.fromtimestamp(deadline, tz=UTC)
        self.metadata.set_interruption(job["instance_id"], deadline=when)
        self.metadata.set_gce_preempted(job["instance_id"], True)

    def _note_notice(self, job_dir: Path, job: dict) -> None:
        """Record once that the worker read its notice on the metadata endpoint."""
        if (job_dir / J.NOTICE).exists() or not (job_dir / J.RECLAIM).exists():
            return
        served = self.metadata.notices_served(job["instance_id"])
        if served:
            J.write_json_atomic(job_dir / J.NOTICE, {"served": served, "at": time.time()})

    def _record(self, job: dict, event: str, now: float, **extra: object) -> None:
        doc = {
            "event": event,
            "at": now,
            "job_id": job["job_id"],
            "job_name": job.get("job_name"),
            "step_key": job.get("step_key"),
            "capacity": job.get("capacity"),
            "placement": job.get("placement"),
            "instance_id": job.get("instance_id"),
            **extra,
        }
        with contextlib.suppress(OSError):  # watchers lose one event; the market goes on
            append_event(self.events_path, doc)

    def _job_dir(self, job_id: str) -> Path:
        job_dir = self.jobs_dir / job_id
        if not _safe_id(job_id) or not (job_dir / J.JOB).exists():
            raise NotFoundError(f"local job {job_id} does not exist under {self.state_dir}")
        return job_dir


def market_key(step_key: str, placement: str | None) -> str:
    """The market a job runs in: the step's own (no placement, as before placements existed) or
    the step's market in one placement."""
    return step_key if placement is None else f"{step_key}@{placement}"


def _safe_id(job_id: str) -> bool:
    return bool(job_id) and "/" not in job_id and job_id not in (".", "..")


def _read_markets(path: Path) -> dict[str, dict]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
