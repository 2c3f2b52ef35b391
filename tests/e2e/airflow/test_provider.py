"""Airflow sees the provider; the example DAGs run with ``airflow dags test`` from a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import spot_workflows
from spot_workflows.airflow import get_provider_info


def test_provider_manager_sees_the_provider_and_its_parts():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    pm = ProvidersManager()
    provider = pm.providers["spot-workflows"]
    assert provider.version == spot_workflows.__version__
    assert provider.data["name"] == get_provider_info()["name"]
    hook = ProvidersManagerTaskRuntime().hooks["spot-local"]
    assert hook.hook_class_name == "spot_workflows.airflow.hooks.SpotBackendHook"
    assert hook.connection_id_attribute_name == "spot_conn_id"
    assert "spot_workflows.airflow.triggers" in {t.trigger_class_name for t in pm.trigger}
    assert "spot_workflows.airflow.links.SpotJobConsoleLink" in pm.extra_links_class_names
    assert pm.field_behaviours["spot-local"]["hidden_fields"][:2] == ["host", "schema"]


def test_a_spot_local_connection_type_draws_no_rfc3986_warning(capsys, tmp_path, monkeypatch):
    """Airflow logs "Connection schemes (type: X) shall not contain '_'" each time it caches a
    connection whose type has '_'; ``spot-local`` has none, and Airflow turns a ``spot-local://``
    URI back into type ``spot_local``, which still works (as do former ``spot_local`` ones)."""
    from airflow.models.connection import Connection

    from spot_workflows.airflow.hooks import SpotBackendHook

    new = Connection(conn_id="c_new", conn_type="spot-local", extra={"grace_s": 1})
    old = Connection(conn_id="c_old", conn_type="spot_local", extra={"grace_s": 1})
    capsys.readouterr()
    uri = new.get_uri()
    assert "shall not contain" not in "".join(capsys.readouterr())
    old.get_uri()  # the check can fail: the former type draws the warning
    assert "(type: spot_local) shall not contain '_'" in "".join(capsys.readouterr())
    assert Connection(conn_id="c_new", uri=uri).conn_type == "spot_local"

    state = tmp_path / "cloud"
    monkeypatch.setenv("AIRFLOW_CONN_SPOT_URI_TEST", f"spot-local://?state_dir={state}&grace_s=1")
    info = SpotBackendHook(spot_conn_id="spot_uri_test").get_info()
    assert info.conn_type in ("spot_local", "spot-local")
    assert SpotBackendHook(spot_conn_id="spot_uri_test").get_backend().state_dir == state


def test_airflow_dags_test_runs_an_example_dag_from_a_shell(airflow_db, local_conn, tmp_path):
    conn = local_conn(conn_id="spot_local_cli")
    conf = json.dumps(
        {
            "spot_conn_id": conn["conn_id"],
            "rows": 3000,
            "rows_per_file": 1000,
            "workers": 1,
            "data_dir": str(tmp_path / "raw"),
            "output_dir": str(tmp_path / "out"),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "spot_etl_preprocess", "-c", conf],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "dag_id=spot_etl_preprocess" in out and "state=success" in out, out[-3000:]
    assert "loaded {'rows': 3000, 'files': 3" in out  # the load task read the step's outputs
    assert len(list((conn["state_dir"] / "jobs").iterdir())) == 1
