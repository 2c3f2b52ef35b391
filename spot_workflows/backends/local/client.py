"""The local backend: a client of the local spot cloud daemon of a state directory.

Every process that builds a :class:`LocalBackend` on the same state directory (the CLI, a runner,
an Airflow task and its triggerer, a Prefect worker) talks to one daemon (:mod:`.daemon`),
which is started on first use if none runs. Jobs belong to the daemon, not to the process that
submitted them; the market is the daemon's, one per step key; each job's metadata endpoint is
the daemon's and lives as long as the job. Each submission carries its market settings, notice
window and grace period.

``python`` / ``python3`` at the head of a command run on the interpreter that runs
spot-workflows (``sys.executable``), so a step runs in the same environment as its orchestrator.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from spot_workflows.backends.base import attempt_env
from spot_workflows.backends.local.cloud import EVENTS_FILE
from spot_workflows.backends.local.daemon import INFO_FILE, TOKEN_FILE
from spot_workflows.backends.local.jobs import LOG, read_json
from spot_workflows.backends.local.market import SpotMarket, market_spec
from spot_workflows.backends.local.placements import local_placements, pick_placement
from spot_workflows.config import StepSpec
from spot_workflows.core.outcomes import Capacity, Observation
from spot_workflows.core.placements import Placement
from spot_workflows.errors import BackendError, ConfigError, NotFoundError

STATE_DIR_ENV = "SPOT_WORKFLOWS_LOCAL_DIR"
IDLE_EXIT_S = 600.0
"""An auto-started daemon exits after this long with no job and no request (state stays on disk;
the next client starts it again). ``spot-workflows local serve`` runs until stopped."""
START_TIMEOUT_S = 30.0
_spawned: list[subprocess.Popen] = []


def default_state_dir() -> Path:
    """``$SPOT_WORKFLOWS_LOCAL_DIR``, else ``~/.spot-workflows/local``."""
    raw = os.environ.get(STATE_DIR_ENV) or "~/.spot-workflows/local"
    return Path(raw).expanduser().resolve()


def resolve_python(command: Sequence[str]) -> list[str]:
    """``python`` / ``python3`` at the head of a command -> this interpreter."""
    command = list(command)
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command


class LocalCloudClient:
    """Talks to the daemon of ``state_dir`` (starting it if ``start`` and none answers)."""

    def __init__(self, state_dir: str | Path, *, start: bool = True, tick_s: float = 0.05):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.start = start
        self.tick_s = tick_s
        self._url: str | None = None
        self._token: str | None = None

    # -- connection --------------------------------------------------------------------------
    def _probe(self) -> bool:
        info = read_json(self.state_dir / INFO_FILE)
        try:
            token = (self.state_dir / TOKEN_FILE).read_text().strip()
        except OSError:
            return False
        if not info or not info.get("port"):
            return False
        self._url, self._token = f"http://127.0.0.1:{info['port']}", token
        try:
            self._call("GET", "/v1/status", timeout=2.0)
        except (OSError, BackendError):
            self._url = None
            return False
        return True

    def connect(self) -> LocalCloudClient:
        for proc in list(_spawned):  # reap daemons this process started that have exited
            if proc.poll() is not None:
                _spawned.remove(proc)
        if self._probe():
            return self
        if not self.start:
            raise BackendError(
                f"no local spot cloud runs for {self.state_dir}: start one with "
                f"'spot-workflows local serve --state-dir {self.state_dir}'"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "start.lock", "a") as lock:
            _flock(lock, START_TIMEOUT_S)
            if self._probe():
                return self
            log_path = self.state_dir / "daemon.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "spot_workflows.backends.local.daemon",
                        f"--state-dir={self.state_dir}",
                        f"--idle-exit-s={IDLE_EXIT_S}",
                        f"--tick-s={self.tick_s}",
                    ],
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            _spawned.append(proc)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._probe():
                    return self
                if proc.poll() is not None and proc.returncode != 0:
                    break
                time.sleep(0.05)
        tail = _tail(log_path)
        raise BackendError(
            f"the local spot cloud for {self.state_dir} did not start within "
            f"{START_TIMEOUT_S:.0f}s; its log ({log_path}) ends with: {tail}"
        )

    def _call(self, method: str, path: str, body: dict | None = None, *, timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self._url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                doc = json.loads(exc.read() or b"{}")
            except ValueError:
                doc = {}
            message = doc.get("error") or f"HTTP {exc.code}"
            if exc.code == 404 and doc.get("type") == "NotFoundError":
                raise NotFoundError(message) from None
            if exc.code == 400 and doc.get("type") == "ConfigError":
                raise ConfigError(message) from None
            raise BackendError(f"local spot cloud ({self.state_dir}): {message}") from None

    def call(self, method: str, path: str, body: dict | None = None) -> object:
        """One request; (re)connects, and starts the daemon if it went away."""
        if self._url is None:
            self.connect()
        try:
            return self._call(method, path, body)
        except OSError:  # the daemon went away (idle exit, restart): connect again, once
            self._url = None
            self.connect()
            return self._call(method, path, body)

    def stop(self, *, reason: str = "the local spot cloud was stopped") -> dict | None:
        """Stop the daemon and every job it runs; None if none was running."""
        if not self._probe():
            return None
        info = read_json(self.state_dir / INFO_FILE) or {}
        doc = self._call("POST", "/v1/stop", {"reason": reason}, timeout=60.0)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and _pid_alive(info.get("pid")):
            time.sleep(0.05)
        return doc


class LocalBackend:
    """Backend that runs attempts on this machine through the local spot cloud daemon.

    ``market``: this step's simulated spot market (sent with each submission; the daemon keeps
    one per step key). ``notice_window_s``: notice on the metadata endpoint before SIGTERM;
    ``grace_s``: SIGTERM to SIGKILL; ``wrap``: run commands under ``spot-run``.

    ``placements``: several markets per step (:class:`Placement` objects or dicts). Each SPOT
    placement is its own market of the step (its own schedule, availability and reclaims); its
    market is ``markets[name]``, else a ``"market"`` key of its dict, else ``market``. ON_DEMAND
    placements are never reclaimed. A list without an ON_DEMAND (or SPOT) placement gets a
    default one (``on-demand`` / ``spot``). Without ``placements`` the backend has one market per
    capacity, exactly as before: ``placements`` is then ``(spot, on-demand)``.
    """

    name = "local"
    stop_latency_s = 0.5  # cancel -> SIGTERM -> exit observed, on this machine
    default_on_demand_capacity_timeout_s = 300.0
    """On-demand capacity is always there locally: a job that does not start within this long is
    broken, and waiting on it forever helps nobody."""

    def __init__(
        self,
        *,
        state_dir: str | Path | None = None,
        market: SpotMarket | None = None,
        notice_window_s: float = 2.0,
        grace_s: float = 5.0,
        notice_poll_s: float = 0.2,
        tick_s: float = 0.05,
        wrap: bool = True,
        placements: Sequence[Placement | Mapping] | None = None,
        markets: Mapping[str, SpotMarket | Mapping | None] | None = None,
    ) -> None:
        if notice_window_s < 0 or grace_s < 0:
            raise BackendError("notice_window_s and grace_s must be >= 0 seconds")
        self.state_dir = Path(state_dir).expanduser().resolve() if state_dir else None
        self.state_dir = self.state_dir or default_state_dir()
        self.market = market
        self.market_spec = market_spec(market)
        self.placements, self._market_specs = local_placements(
            placements, markets, self.market_spec
        )
        self.named_placements = placements is not None
        """True when the user listed placements (markets); False: the one market per capacity
        of old, whose availability :meth:`spot_available` tells the runner directly."""
        self.notice_window_s = notice_window_s
        self.grace_s = grace_s
        self.notice_poll_s = notice_poll_s
        self.wrap = wrap
        self.client = LocalCloudClient(self.state_dir, tick_s=tick_s)
        self._step_key: str | None = None

    @property
    def events_path(self) -> Path:
        """The daemon's JSON-lines market events (see :mod:`.events`)."""
        return self.state_dir / EVENTS_FILE

    def start(self) -> LocalBackend:
        self.client.connect()
        return self

    def close(self) -> None:
        """Nothing to release: the daemon and its jobs outlive this client."""

    def __enter__(self) -> LocalBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- placements ------------------------------------------------------------------------------
    def placement_for(self, capacity: Capacity, name: str | None = None) -> Placement:
        """The placement ``name`` of ``capacity`` (None: the first of that capacity)."""
        return pick_placement(self.placements, capacity, name)

    def market_of(self, placement: str | None = None) -> dict:
        """The market spec of a SPOT placement (None: the first)."""
        return self._market_specs[self.placement_for(Capacity.SPOT, placement).name]

    # -- Backend protocol --------------------------------------------------------------------
    def submit(
        self,
        spec: StepSpec,
        *,
        job_name: str,
        attempt: int,
        capacity: Capacity,
        placement: str | None = None,
    ) -> str:
        place = self.placement_for(capacity, placement)
        env = attempt_env(
            spec,
            attempt=attempt,
            capacity=capacity,
            extra={
                "SPOT_NOTICE_SOURCE": "local",
                "SPOT_NOTICE_POLL_S": str(self.notice_poll_s),
                "PYTHONUNBUFFERED": "1",
            },
        )
        command = resolve_python(spec.command)
        if self.wrap:
            command = [
                sys.executable,
                "-m",
                "spot_workflows.runtime.worker.entrypoint",
                "--",
                *command,
            ]
        self._step_key = spec.key
        doc = {
            "job_name": job_name,
            "step_key": spec.key,
            "attempt": attempt,
            "capacity": capacity.value,
            "command": command,
            "env": env,
            "cwd": os.getcwd(),
            "market": self._market_specs.get(place.name, self.market_spec),
            "notice_window_s": self.notice_window_s,
            "grace_s": self.grace_s,
        }
        if self.named_placements:
            doc["placement"] = place.name
        return str(self.client.call("POST", "/v1/jobs", doc)["job_id"])

    def describe(self, job_ids: Sequence[str]) -> dict[str, Observation]:
        found = self.client.call("POST", "/v1/describe", {"job_ids": list(job_ids)})
        return {k: Observation.model_validate(v) for k, v in found.items()}

    def cancel(self, job_id: str, *, reason: str) -> None:
        self.client.call("POST", f"/v1/jobs/{job_id}/cancel", {"reason": reason})

    def find(self, job_name: str) -> str | None:
        from urllib.parse import quote

        return self.client.call("GET", f"/v1/find?name={quote(job_name)}")["job_id"]

    def reclaim(self, job_id: str) -> None:
        """Reclaim a running spot attempt now (notice, then SIGTERM/SIGKILL as configured):
        the local equivalent of an injected ``Host EC2 ... terminated``."""
        self.client.call("POST", f"/v1/jobs/{job_id}/reclaim", {})

    def spot_available(self, step_key: str | None = None, placement: str | None = None) -> bool:
        """Whether this step's market (in SPOT ``placement``; None: the first) has spot capacity
        now (for deadline policies)."""
        key = step_key or self._step_key or ""
        place = self.placement_for(Capacity.SPOT, placement)
        body: dict = {"step_key": key, "market": self._market_specs[place.name]}
        if self.named_placements:
            body["placement"] = place.name
        return bool(self.client.call("POST", "/v1/market/available", body)["available"])

    def jobs(self) -> list[dict]:
        """Every job of the daemon (what ``spot-workflows local jobs --json`` prints)."""
        return list(self.client.call("GET", "/v1/jobs"))

    def market_events(self) -> list[dict]:
        """The market's events so far (notice / sigterm / sigkill / lost), oldest first."""
        try:
            lines = self.events_path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def log_path(self, job_id: str) -> Path:
        return self.state_dir / "jobs" / job_id / LOG

    def shutdown(self) -> dict | None:
        """Stop the daemon of this state directory and every job it runs."""
        return self.client.stop()


def _flock(f, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise BackendError(f"timed out waiting for {f.name}") from None
            time.sleep(0.05)


def _pid_alive(pid: int | None) -> bool:
    from spot_workflows.backends.local.jobs import alive

    return alive(pid)


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:]) or "(empty)"
    except OSError:
        return "(no log)"
