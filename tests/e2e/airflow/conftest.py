"""Airflow e2e tests: real Airflow 3.3, sqlite, ``dag.test()``, no scheduler.

Airflow reads its configuration when it is first imported, so the environment is set here,
before anything below imports it: a throwaway AIRFLOW_HOME (config, sqlite db, logs, dags folder)
and no example DAGs. The metadata db is created once per session. The example DAGs of ``dags/``
and the test DAGs of ``tests/e2e/airflow/dags/`` are copied into the throwaway dags folder, since
``dag.test()`` syncs the DAG's bundle to the db. The variables are restored when the session
ends; other test directories never import airflow.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_HOME = Path(tempfile.mkdtemp(prefix="spot-airflow-home-"))
_ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(_HOME / "dags"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
}
_SAVED = {name: os.environ.get(name) for name in _ENV}
if "airflow" in sys.modules:  # pragma: no cover - a sign something imported it first
    warnings.warn(
        "airflow was imported before tests/e2e/airflow/conftest.py set AIRFLOW_HOME; these tests "
        "may use your real Airflow home",
        stacklevel=1,
    )
os.environ.update(_ENV)
(_HOME / "dags").mkdir()
for folder in (ROOT / "dags", Path(__file__).parent / "dags"):
    for dag_file in folder.glob("*.py"):
        shutil.copy(dag_file, _HOME / "dags" / dag_file.name)

import pytest  # noqa: E402
from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.utils import db  # noqa: E402

from spot_workflows.airflow.connections import close_local_backends  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Iterator[Path]:
    db.resetdb()
    yield _HOME
    close_local_backends()
    shutil.rmtree(_HOME, ignore_errors=True)
    for name, value in _SAVED.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def dagbag(airflow_db: Path) -> DagBag:
    bag = DagBag(dag_folder=str(airflow_db / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(autouse=True)
def _stop_local_markets() -> Iterator[None]:
    yield
    close_local_backends()


@pytest.fixture
def local_conn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Define a ``spot_local`` connection (env var) on a fresh state dir; returns its id and
    paths. ``extra`` goes into the connection's extras (reclaims, notice_window_s, ...)."""
    import json

    def make(conn_id: str = "spot_local_test", **extra: object) -> dict:
        state_dir = tmp_path / f"state-{conn_id}"
        ckpt = tmp_path / f"ckpt-{conn_id}"
        extra = {"state_dir": str(state_dir), "checkpoint_root": f"file://{ckpt}", **extra}
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps({"conn_type": "spot_local", "extra": extra}),
        )
        return {"conn_id": conn_id, "state_dir": state_dir, "checkpoint_root": ckpt}

    return make


class DagRunResult:
    """What a ``dag.test()`` run left in the db: task states, tries and XComs."""

    def __init__(self, dag_run) -> None:
        self.dag_run = dag_run
        self.state = str(dag_run.state)
        self.tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}

    def task_state(self, task_id: str) -> str:
        return str(self.tis[task_id].state)

    def xcom(self, task_id: str, key: str = "return_value"):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.scalars(
                XComModel.get_many(
                    run_id=self.dag_run.run_id,
                    dag_ids=self.dag_run.dag_id,
                    task_ids=task_id,
                    key=key,
                )
            ).first()
            return None if row is None else XComModel.deserialize_value(row)


@pytest.fixture
def run_dag(dagbag: DagBag):
    """``run_dag(dag_id, **conf)`` runs the DAG with ``dag.test()`` and returns the result."""

    def run(dag_id: str, **conf: object) -> DagRunResult:
        dag = dagbag.get_dag(dag_id)
        assert dag is not None, f"DAG {dag_id} not found; import errors: {dagbag.import_errors}"
        # Airflow resolves a run's conf into the DAG's own Param objects (Param.resolve keeps the
        # last value). A real task process parses the DAG afresh, so that never outlives a run;
        # here the DagBag is shared by the session, so put the defaults back after each run.
        params = [param for holder in (dag, *dag.tasks) for param in holder.params.values()]
        defaults = [(param, copy.deepcopy(param.value)) for param in params]
        try:
            return DagRunResult(dag.test(run_conf=conf or None))
        finally:
            for param, value in defaults:
                param.value = value

    return run


@pytest.fixture
def on_runner_log(monkeypatch: pytest.MonkeyPatch):
    """``on_runner_log(handler)``: ``handler`` sees the runner's INFO lines ("attempt N on SPOT as
    JOB", written before the task defers) for this test; returns it. Tests play a cloud's market
    from those lines, so they never wait on the wall clock."""
    import logging

    runner_log = logging.getLogger("spot_workflows.runner")
    monkeypatch.setattr(runner_log, "level", logging.INFO)
    handlers: list[logging.Handler] = []

    def attach(handler: logging.Handler) -> logging.Handler:
        runner_log.addHandler(handler)
        handlers.append(handler)
        return handler

    yield attach
    for handler in handlers:
        runner_log.removeHandler(handler)
