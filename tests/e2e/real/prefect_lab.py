"""A real Prefect stack for end-to-end tests, as users run it (no ``prefect_test_harness``).

``PrefectLab(root)`` keeps everything under ``root``: a throwaway ``PREFECT_HOME``, the local
spot cloud's state directory (``SPOT_WORKFLOWS_LOCAL_DIR``), a copy of ``flows/`` to deploy from,
and one log file per process and CLI call (``root/logs``). ``start()`` runs ``prefect server
start`` on a free port of 127.0.0.1, ``prefect work-pool create``, ``prefect deploy --all`` and
``prefect worker start``; the server and the worker run in their own process groups. Flow runs are
created and watched through the server's REST API (no CLI imports to pay for). ``stop()`` stops
the local spot cloud, the worker and the server (SIGTERM, then SIGKILL after a bounded wait),
then ends any process still carrying this lab's marker variable in its environment (flow runs,
a local cloud daemon, its jobs): nothing outlives the lab. ``ProgressReclaimer`` reclaims spot
attempts by training progress through the local spot cloud.

On SQLite the server logs ``database is locked`` tracebacks from ``mark_deployments_ready``
while the worker polls (known upstream, PrefectHQ/prefect#23051): noise, the runs go on; REST
calls answered 503 for the same reason are retried.

Standalone (prints the evidence as JSON)::

    .venv/bin/python tests/e2e/real/prefect_lab.py [ROOT]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from proc_lab import (
    LabError,
    LabProcesses,
    Proc,
    free_port,
    kill_group,
    marked_processes,
    sweep,
    tail,
)

REPO = Path(__file__).resolve().parents[3]
FLOWS = REPO / "flows"
BIN = Path(os.path.normpath(os.path.abspath(sys.executable))).parent  # not resolved: a venv
PREFECT = BIN / "prefect"
SPOT_WORKFLOWS = BIN / "spot-workflows"
POOL = "spot-local"
DEPLOYMENT = "spot-finetune/finetune-local"
MARKER = "SPOT_PREFECT_LAB"
"""Set in the environment of every process the lab starts; its descendants inherit it."""
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRY_STATUS = {429, 502, 503, 504}


@dataclass
class FlowRunEvidence:
    """What one flow run left behind: its state, its logs, its ledger, the flow's summary."""

    flow_run_id: str
    workdir: Path
    state_type: str | None = None
    state_name: str | None = None
    state_message: str | None = None
    logs: list[str] = field(default_factory=list)
    summary: dict | None = None
    ledgers: dict[str, dict] = field(default_factory=dict)
    """``ledger.json`` of each step under ``workdir/checkpoints``, by step key."""


class PrefectLab(LabProcesses):
    def __init__(self, root: Path, *, startup_timeout_s: float = 150.0) -> None:
        self.root = Path(root).resolve()
        self.home = self.root / "prefect-home"
        self.local_dir = self.root / "local-cloud"
        self.logs = self.root / "logs"
        self.flows = self.root / "flows"
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.procs: list[Proc] = []
        self.leftovers: list[str] = []
        """Processes the sweep in :meth:`stop` had to end (pid and command line)."""
        self._cli_calls = 0
        for d in (self.home, self.local_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.env = self._environment()
        self.http = httpx.Client(base_url=self.api_url, timeout=30.0)

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SPOT_"))}
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "PREFECT_HOME": str(self.home),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_MEMO_STORE_PATH": str(self.home / "memo_store.toml"),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(
                    int(self.startup_timeout_s)
                ),
                "PREFECT_UI_ENABLED": "false",
                "PREFECT_CLI_PROMPT": "false",
                # the worker looks for scheduled runs every 2 s, not every 10; flow runs send
                # their logs every 0.5 s, not every 2
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
                "SPOT_WORKFLOWS_LOCAL_DIR": str(self.local_dir),
                "SPOT_WORKFLOWS_HOME": str(self.root / "spot-home"),
                MARKER: str(self.root),
            }
        )
        return env

    # -- processes -----------------------------------------------------------------------------
    def _alive_or_raise(self, proc: Proc, what: str) -> None:
        if proc.popen.poll() is not None:
            raise LabError(
                f"{proc.name} exited {proc.popen.returncode} while {what}:\n{tail(proc.log)}"
            )

    # -- the stack -----------------------------------------------------------------------------
    def start(self) -> PrefectLab:
        self.start_server()
        self.cli([str(PREFECT), "work-pool", "create", POOL, "--type", "process"])
        # the worker starts (imports, first poll) while the flows are being deployed
        self.spawn("worker", [str(PREFECT), "worker", "start", "--pool", POOL])
        shutil.copytree(FLOWS, self.flows, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.cli([str(PREFECT), "--no-prompt", "deploy", "--all"], cwd=self.flows)
        return self

    def start_server(self, tries: int = 3) -> Proc:
        """``prefect server start`` on a free port; another port if that one was taken since."""
        for attempt in range(1, tries + 1):
            server = self.spawn(
                "server",
                [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            )
            try:
                self.wait_healthy(server)
                return server
            except LabError:
                taken = "already in use" in tail(server.log, 200).lower()
                if not taken or attempt == tries:
                    raise
            self.procs.remove(server)
            kill_group(server.popen, grace_s=5.0)
            self._use_port(free_port())
        raise AssertionError("unreachable")

    def _use_port(self, port: int) -> None:
        self.port = port
        self.api_url = self.env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        self.http.base_url = self.api_url

    def wait_healthy(self, server: Proc) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            self._alive_or_raise(server, "starting")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.25)
        raise LabError(
            f"the Prefect server did not answer on {self.api_url} within "
            f"{self.startup_timeout_s:.0f}s\n{self.diagnostics()}"
        )

    def api(self, method: str, path: str, *, timeout_s: float = 30.0, **kwargs: Any) -> Any:
        """One REST call, retried (bounded) like Prefect's own client does on 429 and 5xx: on
        SQLite the server answers 503 while its database is locked."""
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        while True:
            try:
                resp = self.http.request(method, path, **kwargs)
                if resp.status_code not in RETRY_STATUS:
                    resp.raise_for_status()
                    return resp.json()
                failure: Exception = httpx.HTTPStatusError(
                    f"{method} {path}: {resp.status_code} {resp.text[:300]}",
                    request=resp.request,
                    response=resp,
                )
            except httpx.TransportError as exc:
                failure = exc
            if time.monotonic() + delay > deadline:
                raise failure
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def deployment_id(self, name: str = DEPLOYMENT) -> str:
        return self.api("GET", f"/deployments/name/{name}")["id"]

    def run_deployment(
        self, parameters: dict[str, Any], *, key: str, name: str = DEPLOYMENT
    ) -> str:
        """Create a flow run of the deployment (as ``prefect deployment run`` does); its id.
        ``key`` is the idempotency key: a retried request cannot create a second run."""
        doc = self.api(
            "POST",
            f"/deployments/{self.deployment_id(name)}/create_flow_run",
            json={"parameters": parameters, "idempotency_key": f"{self.root}:{key}"},
        )
        return doc["id"]

    def flow_run(self, flow_run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{flow_run_id}")

    def wait_final(self, flow_run_ids: list[str], *, timeout_s: float) -> dict[str, dict]:
        """Wait (bounded) until every flow run is in a final state; the runs as last read."""
        deadline = time.monotonic() + timeout_s
        runs: dict[str, dict] = {}
        while True:
            for run_id in flow_run_ids:
                with contextlib.suppress(httpx.HTTPError):
                    runs[run_id] = self.flow_run(run_id)
            states = {i: ((r.get("state") or {}).get("type")) for i, r in runs.items()}
            if len(states) == len(flow_run_ids) and set(states.values()) <= FINAL_STATES:
                return runs
            for proc in self.procs:
                self._alive_or_raise(proc, f"flow runs were running ({states})")
            if time.monotonic() > deadline:
                raise LabError(
                    f"flow runs not final after {timeout_s:.0f}s: {states}\n{self.diagnostics()}"
                )
            time.sleep(0.5)

    def flow_run_logs(self, flow_run_id: str) -> list[str]:
        messages: list[str] = []
        while True:
            body = {
                "logs": {"flow_run_id": {"any_": [flow_run_id]}},
                "sort": "TIMESTAMP_ASC",
                "offset": len(messages),
                "limit": 200,
            }
            page = [entry["message"] for entry in self.api("POST", "/logs/filter", json=body)]
            messages += page
            if len(page) < 200:
                return messages

    def evidence(
        self, flow_run_id: str, workdir: Path, *, logs_timeout_s: float = 20.0
    ) -> FlowRunEvidence:
        """What a finished flow run left; waits (bounded) for its summary to reach its logs: a
        flow run's last logs reach the server after its final state does."""
        run = self.flow_run(flow_run_id)
        state = run.get("state") or {}
        found = FlowRunEvidence(
            flow_run_id=flow_run_id,
            workdir=workdir,
            state_type=state.get("type"),
            state_name=state.get("name"),
            state_message=state.get("message"),
        )
        deadline = time.monotonic() + logs_timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                found.logs = self.flow_run_logs(flow_run_id)
            found.summary = flow_summary(found.logs)
            done = found.summary is not None or found.state_type != "COMPLETED"
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for path in sorted((workdir / "checkpoints").glob("*/ledger.json")):
            with contextlib.suppress(OSError, ValueError):
                found.ledgers[path.parent.name] = json.loads(path.read_text())
        return found

    def wait_state(self, flow_run_id: str, types: set[str], *, timeout_s: float) -> dict:
        """Wait (bounded) until the flow run's state type is one of ``types``; the run."""
        deadline = time.monotonic() + timeout_s
        run: dict = {}
        while True:
            with contextlib.suppress(httpx.HTTPError):
                run = self.flow_run(flow_run_id)
            if ((run.get("state") or {}).get("type")) in types:
                return run
            for proc in self.procs:
                self._alive_or_raise(proc, f"waiting for flow run {flow_run_id} to be {types}")
            if time.monotonic() > deadline:
                state = (run.get("state") or {}).get("type")
                raise LabError(
                    f"flow run {flow_run_id} not in {sorted(types)} after {timeout_s:.0f}s "
                    f"(it is {state})\n{self.diagnostics()}"
                )
            time.sleep(0.25)

    def flow_run_process(self, flow_run_id: str) -> int | None:
        """The pid of the process running the flow run (the worker's ``python -m
        prefect.engine`` child, found by its ``PREFECT__FLOW_RUN_ID``), or None."""
        wanted = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
        for pid, cmd in marked_processes(MARKER, self.root).items():
            if "prefect.engine" not in cmd:
                continue
            with contextlib.suppress(OSError):
                if wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return pid
        return None

    def retry_flow_run(self, flow_run_id: str) -> subprocess.CompletedProcess:
        """``prefect flow-run retry ID``: a finished (or crashed) run is scheduled again."""
        return self.cli([str(PREFECT), "flow-run", "retry", flow_run_id], timeout_s=120)

    # -- the local spot cloud's CLI ------------------------------------------------------------
    def has_local_cli(self) -> bool:
        """Whether ``spot-workflows local`` exists (the local spot cloud daemon's CLI)."""
        done = self.cli([str(SPOT_WORKFLOWS), "local", "--help"], check=False, timeout_s=60)
        return done.returncode == 0

    def local_jobs(self) -> list[dict]:
        """``spot-workflows local jobs --json --state-dir LOCAL_DIR``: every job of the cloud."""
        done = self.cli(
            [
                str(SPOT_WORKFLOWS),
                "local",
                "jobs",
                "--json",
                "--state-dir",
                str(self.local_dir),
            ],
            timeout_s=60,
        )
        doc = json.loads(done.stdout)
        return list(doc["jobs"] if isinstance(doc, dict) else doc)

    # -- teardown ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything this lab started; bounded; never raises."""
        worker = [p for p in self.procs if p.name == "worker"]
        others = [p for p in self.procs if p.name != "worker"]
        for proc in worker:  # no new flow runs from here on
            kill_group(proc.popen, grace_s=15.0)
        if SPOT_WORKFLOWS.exists():  # the local spot cloud (and its jobs), where it exists
            with contextlib.suppress(Exception):
                self.cli(
                    [str(SPOT_WORKFLOWS), "local", "stop", "--state-dir", str(self.local_dir)],
                    check=False,
                    timeout_s=60,
                )
        for proc in others:
            kill_group(proc.popen, grace_s=15.0)
        self.leftovers = sweep(MARKER, self.root)
        with contextlib.suppress(Exception):
            self.http.close()

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of every log of this lab (processes, CLI calls, the local cloud's daemon)."""
        logs = sorted(self.logs.glob("*.log")) + sorted(self.local_dir.glob("*.log"))
        return "\n".join(f"--- {path} ---\n{tail(path, lines)}" for path in logs)

    def __enter__(self) -> PrefectLab:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProgressReclaimer:
    """Reclaims the n-th spot attempt of each step once its log shows training step
    ``at_steps[n]``, through the local spot cloud of ``state_dir`` (notice on the job's metadata
    endpoint, then SIGTERM): a reclaim that always lands on work in progress, however loaded the
    machine (a reclaim N seconds after the start may come before training has begun).

    Steps are found through their ledgers (``<workdir>/checkpoints/<step key>/ledger.json``);
    ``reclaimed`` lists the jobs reclaimed per step, ``waiting`` the attempt each step's next
    reclaim waits on (its progress and log), ``errors`` what went wrong.
    """

    def __init__(
        self, state_dir: Path, workdirs: list[Path], at_steps: list[int], *, poll_s: float = 0.05
    ) -> None:
        self.state_dir = state_dir
        self.workdirs = workdirs
        self.at_steps = at_steps
        self.poll_s = poll_s
        self.reclaimed: dict[str, list[str]] = {}
        self.waiting: dict[str, str] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="reclaimer", daemon=True)

    def start(self) -> ProgressReclaimer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)

    def _watch(self) -> None:
        from spot_workflows.backends.local import LocalBackend

        backend = LocalBackend(state_dir=self.state_dir)
        while not self._stop.wait(self.poll_s):
            for workdir in self.workdirs:
                for path in (workdir / "checkpoints").glob("*/ledger.json"):
                    try:
                        self._maybe_reclaim(backend, json.loads(path.read_text()))
                    except ValueError:  # a ledger being replaced: read it next time
                        continue
                    except Exception as exc:  # reported through errors; the runs show the rest
                        self.errors.append(f"{path}: {exc!r}")

    def _maybe_reclaim(self, backend: Any, ledger: dict) -> None:
        done = self.reclaimed.setdefault(ledger["step_key"], [])
        spot = [a for a in ledger["attempts"] if a["capacity"] == "SPOT"]
        if len(done) >= len(self.at_steps) or len(spot) <= len(done):
            return
        attempt = spot[len(done)]
        job_id = attempt.get("job_id")
        if not job_id or attempt.get("outcome") is not None or job_id in done:
            return
        log, target = backend.log_path(job_id), self.at_steps[len(done)]
        reached = last_step(log)
        self.waiting[ledger["step_key"]] = (
            f"{job_id} at step {reached} of {target} ({log}{'' if log.exists() else ': missing'})"
        )
        if reached >= target:
            backend.reclaim(job_id)
            done.append(job_id)
            self.waiting.pop(ledger["step_key"], None)


def last_step(log: Path) -> int:
    """The last ``STEP n`` the trainer printed in its log (0 before its first step)."""
    try:
        found = re.findall(rb"^STEP (\d+)$", log.read_bytes(), flags=re.MULTILINE)
    except OSError:
        return 0
    return int(found[-1]) if found else 0


def flow_summary(logs: list[str]) -> dict | None:
    """The summary ``spot_finetune`` prints (and returns), read back from its logs."""
    for message in reversed(logs):
        start = message.find("{")
        if start < 0:
            continue
        with contextlib.suppress(ValueError):
            doc = json.loads(message[start:])
            if isinstance(doc, dict) and "matches_uninterrupted_run" in doc:
                return doc
    return None


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="prefect-lab-"))
    t0 = time.monotonic()
    with PrefectLab(root) as lab:
        up = time.monotonic() - t0
        workdirs = [root / "runs" / f"run-{n}" for n in (1, 2)]
        reclaimer = ProgressReclaimer(lab.local_dir, workdirs, [60, 160]).start()
        params = [{"workdir": str(w), "reclaim_after_s": []} for w in workdirs]
        ids = [lab.run_deployment(p, key=w.name) for p, w in zip(params, workdirs, strict=True)]
        try:
            lab.wait_final(ids, timeout_s=240)
        finally:
            reclaimer.stop()
        runs = [lab.evidence(i, w) for i, w in zip(ids, workdirs, strict=True)]
        jobs = lab.local_jobs() if lab.has_local_cli() else None
    out = {
        "root": str(root),
        "stack_up_s": round(up, 1),
        "total_s": round(time.monotonic() - t0, 1),
        "reclaimed": reclaimer.reclaimed,
        "reclaimer_errors": reclaimer.errors,
        "runs": [
            {k: v for k, v in vars(r).items() if k != "logs"} | {"workdir": str(r.workdir)}
            for r in runs
        ],
        "jobs": jobs,
        "leftovers": lab.leftovers,
    }
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
