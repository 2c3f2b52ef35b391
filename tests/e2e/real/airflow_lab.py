"""A real Airflow 3 stack for end-to-end tests, as users run it (no ``dag.test()``).

``AirflowLab(root)`` keeps everything under ``root``: a throwaway ``AIRFLOW_HOME`` (config,
SQLite db, task logs, a dags folder holding a copy of ``dags/spot_finetune.py`` and of the test
DAG ``tests/e2e/real/dags/spot_kill_retry.py``), the local spot
cloud's state directory (``SPOT_WORKFLOWS_LOCAL_DIR``, set for every Airflow process), and one log
file per process and CLI call (``root/logs``). ``start()`` runs ``airflow db migrate``, then
``airflow api-server`` (on a free port of 127.0.0.1), ``scheduler`` (LocalExecutor),
``dag-processor`` and ``triggerer``, each in its own process group, and waits until the api-server
answers and the DAG is parsed. DAG runs are triggered through the api-server's REST API (a token
from the simple auth manager, for a user whose password the lab writes itself); their states, task
states and XComs are read straight from the SQLite db. ``stop()`` stops the scheduler (no new
task), the triggerer and the dag-processor, then the local spot cloud (``spot-workflows local
stop``) and the api-server (SIGTERM to each process group, SIGKILL after a bounded wait), then ends
any process still carrying this lab's marker variable in its environment (task processes, a local
cloud daemon, its jobs): nothing outlives the lab.

Standalone (prints the evidence as JSON)::

    .venv/bin/python tests/e2e/real/airflow_lab.py [ROOT]
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from proc_lab import LabError, LabProcesses, Proc, free_port, kill_group, sweep, tail

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
AIRFLOW = BIN / "airflow"
SPOT_WORKFLOWS = BIN / "spot-workflows"
DAG_ID = "spot_finetune"
KILL_DAG_ID = "spot_kill_retry"
"""A test DAG: one ``deferrable=False`` spot step (task ``step``) with one Airflow retry."""
POOL_DAG_ID = "spot_pool"
"""A test DAG: one deferrable spot step (task ``step``) on ``spot_pool``: two spot markets."""
DAG_FILES = (
    REPO / "dags" / "spot_finetune.py",
    Path(__file__).resolve().parent / "dags" / f"{KILL_DAG_ID}.py",
    Path(__file__).resolve().parent / "dags" / f"{POOL_DAG_ID}.py",
)
DAG_IDS = (DAG_ID, KILL_DAG_ID, POOL_DAG_ID)
POOL_CONNECTION = {
    "conn_type": "spot-local",
    "extra": {
        "placements": [
            {"name": "zone-a"},
            {"name": "zone-b"},
            {"name": "on-demand", "capacity": "ON_DEMAND"},
        ],
        "markets": {"zone-a": {"spot_unavailable": [[0, 86400]]}},
    },
}
"""``spot_pool``: the local spot cloud with two spot markets, ``zone-a`` without capacity."""
MARKER = "SPOT_AIRFLOW_LAB"
"""Set in the environment of every process the lab starts; its descendants inherit it."""
USER = "lab"
FINAL_RUN_STATES = {"success", "failed"}
RACE_MESSAGE = "but the task instance's state attribute is"
"""What the scheduler logs when the executor reports a deferring task's try as finished after
the task was already re-queued by its trigger (then it marks the task failed)."""


@dataclass
class RunEvidence:
    """What one DAG run left behind: its state, its tasks' states and logs, XComs, the ledger."""

    run_id: str
    step_key: str
    state: str | None = None
    tasks: dict[str, str | None] = field(default_factory=dict)
    """task_id -> state, from ``task_instance``."""
    tries: dict[str, int] = field(default_factory=dict)
    """task_id -> try_number."""
    xcoms: dict[str, dict[str, Any]] = field(default_factory=dict)
    """task_id -> {key: value}, from ``xcom``."""
    ledger: dict | None = None
    ledger_path: Path | None = None
    task_logs: dict[str, list[Path]] = field(default_factory=dict)


class AirflowLab(LabProcesses):
    def __init__(self, root: Path, *, startup_timeout_s: float = 180.0) -> None:
        self.root = Path(root).resolve()
        self.home = self.root / "airflow-home"
        self.dags = self.home / "dags"
        self.db_path = self.home / "airflow.db"
        self.local_dir = self.root / "local-cloud"
        self.logs = self.root / "logs"
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        self.leftovers: list[str] = []
        """Processes the sweep in :meth:`stop` had to end (pid and command line)."""
        self._cli_calls = 0
        self._password = secrets.token_urlsafe(16)
        self._token: str | None = None
        for d in (self.dags, self.local_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.env = self._environment()
        self.http = httpx.Client(base_url=self.base_url, timeout=30.0)

    @property
    def checkpoint_root(self) -> Path:
        """Where the local connections checkpoint by default: ``$AIRFLOW_HOME/spot-workflows``."""
        return self.home / "spot-workflows" / "checkpoints"

    def _environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "SPOT_")) and k != MARKER
        }
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({USER: self._password}) + "\n")
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
                # one secret for every process: the api-server signs the tasks' tokens with it
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__EXPOSE_CONFIG": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                # parse the DAG once: no re-parse every 30 s taking CPU from the steps' start
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "SPOT_WORKFLOWS_LOCAL_DIR": str(self.local_dir),
                "AIRFLOW_CONN_SPOT_POOL": json.dumps(POOL_CONNECTION),
                MARKER: str(self.root),
            }
        )
        return env

    # -- processes -----------------------------------------------------------------------------
    def _check_alive(self, what: str) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise LabError(
                    f"{proc.name} exited {proc.popen.returncode} while {what}\n{self.diagnostics()}"
                )

    # -- the stack -----------------------------------------------------------------------------
    def start(self) -> AirflowLab:
        for dag_file in DAG_FILES:
            shutil.copy(dag_file, self.dags / dag_file.name)
        self.cli([str(AIRFLOW), "db", "migrate"], timeout_s=self.startup_timeout_s)
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            self.spawn(component, [str(AIRFLOW), component])
        deadline = time.monotonic() + self.startup_timeout_s
        self.wait_api(deadline)
        for dag_id in DAG_IDS:
            self.wait_dag(dag_id, deadline)
        return self

    def wait_api(self, deadline: float) -> None:
        """Until the api-server answers its health check and gives the lab a token."""
        while True:
            self._check_alive("starting")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/api/v2/monitor/health", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise LabError(
                    f"the api-server did not answer on {self.base_url} in time\n"
                    f"{self.diagnostics()}"
                )
            time.sleep(0.5)
        resp = self.http.post("/auth/token", json={"username": USER, "password": self._password})
        if resp.status_code >= 300:
            raise LabError(f"no token from the api-server: {resp.status_code} {resp.text[:300]}")
        self._token = resp.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {self._token}"

    def wait_dag(self, dag_id: str, deadline: float) -> None:
        """Until the dag-processor has stored ``dag_id`` (unpaused); an import error fails."""
        while True:
            self._check_alive(f"parsing {dag_id}")
            errors = self.query("SELECT filename, stacktrace FROM import_error")
            if errors:
                raise LabError(f"import errors in the dags folder: {errors}")
            rows = self.query(
                "SELECT d.is_paused FROM dag d JOIN serialized_dag s ON s.dag_id = d.dag_id "
                "WHERE d.dag_id = ?",
                (dag_id,),
            )
            if rows and not rows[0][0]:
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"{dag_id} was not parsed in time (rows: {rows})\n{self.diagnostics()}"
                )
            time.sleep(0.5)

    # -- the metadata db -----------------------------------------------------------------------
    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read-only query on the SQLite db ([] while a table does not exist yet)."""
        if not self.db_path.exists():
            return []
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10.0)
            ) as conn:
                return list(conn.execute(sql, params).fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "locked" in str(exc):
                return []
            raise

    # -- DAG runs ------------------------------------------------------------------------------
    def trigger(self, run_id: str, *, dag_id: str = DAG_ID, conf: dict | None = None) -> None:
        """Trigger a run of ``dag_id`` (as ``airflow dags trigger D -r RUN_ID`` does)."""
        resp = self.http.post(
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": conf or {}},
        )
        if resp.status_code >= 300:
            raise LabError(f"triggering {dag_id} run {run_id}: {resp.status_code} {resp.text}")

    def run_states(self, run_ids: list[str], *, dag_id: str = DAG_ID) -> dict[str, str | None]:
        rows = dict(
            self.query(
                f"SELECT run_id, state FROM dag_run WHERE dag_id = ? AND run_id IN "
                f"({','.join('?' * len(run_ids))})",
                (dag_id, *run_ids),
            )
        )
        return {r: rows.get(r) for r in run_ids}

    def wait_final(
        self, run_ids: list[str], *, timeout_s: float, dag_id: str = DAG_ID
    ) -> dict[str, str | None]:
        """Wait (bounded) until every DAG run is in a final state; their states."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.run_states(run_ids, dag_id=dag_id)
            if set(states.values()) <= FINAL_RUN_STATES:
                return states
            self._check_alive(f"DAG runs were running ({states})")
            if time.monotonic() > deadline:
                raise LabError(
                    f"DAG runs not final after {timeout_s:.0f}s: {states}\n{self.diagnostics()}"
                )
            time.sleep(0.5)

    def evidence(self, run_id: str, *, dag_id: str = DAG_ID, task_id: str = "finetune"):
        """What a finished DAG run left: states, XComs, task logs, the step's ledger."""
        found = RunEvidence(run_id=run_id, step_key=step_key(dag_id, task_id, run_id))
        found.state = self.run_states([run_id], dag_id=dag_id)[run_id]
        for tid, state, tries in self.query(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ):
            found.tasks[tid] = state
            found.tries[tid] = tries
        for tid, key, value in self.query(
            "SELECT task_id, key, value FROM xcom WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ):
            found.xcoms.setdefault(tid, {})[key] = _json(value)
        run_logs = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for task_dir in sorted(run_logs.glob("task_id=*")):
            found.task_logs[task_dir.name.removeprefix("task_id=")] = sorted(
                task_dir.rglob("*.log")
            )
        for path in sorted(self.checkpoint_root.glob("**/ledger.json")):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(path.read_text())
                if doc.get("step_key") == found.step_key:
                    found.ledger, found.ledger_path = doc, path
        return found

    def task_instance(self, run_id: str, task_id: str, *, dag_id: str = DAG_ID) -> dict:
        """``{"id", "state", "try_number"}`` of one task instance ({} while there is none)."""
        rows = self.query(
            "SELECT id, state, try_number FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            (dag_id, run_id, task_id),
        )
        return dict(zip(("id", "state", "try_number"), rows[0], strict=True)) if rows else {}

    def clear_tasks(self, run_id: str, task_ids: list[str], *, dag_id: str = DAG_ID) -> list:
        """Clear task instances of a run, running or deferred ones included, as the UI's Clear
        does (REST ``clearTaskInstances``); the task instances it cleared."""
        resp = self.http.post(
            f"/api/v2/dags/{dag_id}/clearTaskInstances",
            json={
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "dry_run": False,
                "only_failed": False,
            },
        )
        if resp.status_code >= 300:
            raise LabError(f"clearing {task_ids} of {run_id}: {resp.status_code} {resp.text}")
        return resp.json().get("task_instances", [])

    def task_process(self, ti_id: str) -> int | None:
        """The pid of the process running task instance ``ti_id`` (its title is ``airflow worker
        -- <ti id>``; its supervisor's is not), or None."""
        want = f"airflow worker -- {ti_id}".replace("-", "").lower()
        for entry in Path("/proc").iterdir():  # not marked_processes(): setproctitle writes the
            if not entry.name.isdigit():  # title over the process's environment block too
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.strip().replace("-", "").lower() == want:
                return int(entry.name)
        return None

    def scheduler_races(self) -> list[str]:
        """Scheduler log lines that show the deferral race (a task failed by a stale report)."""
        try:
            text = self._log("scheduler").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if RACE_MESSAGE in line]

    # -- the local spot cloud's CLI ------------------------------------------------------------
    def has_local_cli(self) -> bool:
        """Whether ``spot-workflows local`` exists (the local spot cloud daemon's CLI)."""
        done = self.cli([str(SPOT_WORKFLOWS), "local", "--help"], check=False, timeout_s=60)
        return done.returncode == 0

    def local_jobs(self) -> list[dict]:
        """``spot-workflows local jobs --json --state-dir LOCAL_DIR``: every job of the cloud."""
        done = self.cli(
            [str(SPOT_WORKFLOWS), "local", "jobs", "--json", "--state-dir", str(self.local_dir)],
            timeout_s=60,
        )
        doc = json.loads(done.stdout)
        return list(doc["jobs"] if isinstance(doc, dict) else doc)

    # -- teardown ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything this lab started; bounded; never raises."""
        first = ("scheduler", "triggerer", "dag-processor")  # no new task, no trigger, no parse
        for name in first:
            for proc in self.procs:
                if proc.name == name:
                    kill_group(proc.popen, grace_s=15.0)
        if SPOT_WORKFLOWS.exists():  # the local spot cloud (and its jobs), where it exists
            with contextlib.suppress(Exception):
                self.cli(
                    [str(SPOT_WORKFLOWS), "local", "stop", "--state-dir", str(self.local_dir)],
                    check=False,
                    timeout_s=60,
                )
        for proc in self.procs:
            if proc.name not in first:
                kill_group(proc.popen, grace_s=15.0)
        self.leftovers = sweep(MARKER, self.root)
        with contextlib.suppress(Exception):
            self.http.close()

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of every log of this lab: processes, CLI calls, task logs, the local cloud."""
        logs = (
            sorted(self.logs.glob("*.log"))
            + sorted((self.home / "logs").glob("dag_id=*/**/*.log"))
            + sorted(self.local_dir.glob("*.log"))
        )
        jobs = sorted(self.local_dir.glob("jobs/*/output.log"))  # the steps' own output
        return "\n".join(
            [f"--- {path} ---\n{tail(path, lines)}" for path in logs]
            + [f"--- {path} ---\n{tail(path, 12)}" for path in jobs]
        )

    def __enter__(self) -> AirflowLab:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def step_key(dag_id: str, task_id: str, run_id: str) -> str:
    """The step key the operator gives ``task_id`` in run ``run_id`` (its ledger's key)."""
    from spot_workflows.airflow.steps import default_step_key  # no Airflow import

    return default_step_key(dag_id=dag_id, task_id=task_id, run_id=run_id)


def _json(value: Any) -> Any:
    """An XCom value as stored in SQLite: JSON text (sometimes JSON of a JSON string)."""
    for _ in range(2):
        if not isinstance(value, str | bytes):
            return value
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return value


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="airflow-lab-"))
    t0 = time.monotonic()
    tag = secrets.token_hex(3)
    run_ids = [f"lab-{n}-{tag}" for n in (1, 2)]
    with AirflowLab(root) as lab:
        up = time.monotonic() - t0
        for run_id in run_ids:
            lab.trigger(run_id)
        lab.wait_final(run_ids, timeout_s=240)
        runs = [lab.evidence(r) for r in run_ids]
        jobs = lab.local_jobs() if lab.has_local_cli() else None
        races = lab.scheduler_races()
    out = {
        "root": str(root),
        "stack_up_s": round(up, 1),
        "total_s": round(time.monotonic() - t0, 1),
        "runs": [vars(r) for r in runs],
        "jobs": jobs,
        "scheduler_races": races,
        "leftovers": lab.leftovers,
    }
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
