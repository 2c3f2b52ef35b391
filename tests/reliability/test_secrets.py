"""Secrets (issue 11, item 6): credentials never leak; IMDSv2 tokens, never IMDSv1.

Fake credentials (AWS key pair + session token, a Google service-account JSON with a private
key, by file and by value) are set in the environment of a real run on the local backend: the
runner, real ``spot-run`` worker subprocesses that inherit them, two reclaims with notices and
emergency checkpoints, escalation. Then every artifact is scanned for them: every log record
(DEBUG and up, message and arguments), the workers' output logs, every file under the run's work
directory (ledger, checkpoints, manifests, notice files, job records), the run report (JSON and
HTML), the Airflow XCom summary and the Prefect artifact markdown built from that ledger, and the
reprs of the connection settings and Prefect blocks that hold credentials.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spot_workflows.backends.local import metadata as local_metadata
from spot_workflows.backends.local.metadata import LocalMetadataServer
from spot_workflows.core.outcomes import Decision
from spot_workflows.demo import DemoConfig, run_demo
from spot_workflows.ledger import Ledger
from spot_workflows.pricing import load_catalog
from spot_workflows.report import run_report
from spot_workflows.report_html import render_html
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.worker.notices import TerminationWatcher

FAKE_SECRET = "fAkE/sEcReT+aCcEsS0kEy9876543210ZyXwVuTsR"
FAKE_TOKEN = "IQoJb3JpZ2luX2VjEFAKESESSIONTOKEN" + "q7Zx" * 20
FAKE_KEY_ID = "AKIAFAKEACCESSKEY7Q2Z"
FAKE_PRIVATE = "MIIEvAIBADANBgkqhkiG9w0BAQEFAKEPRIVATEKEYBODYnotarealkey0123456789"
FAKE_PRIVATE_ID = "f4k3pr1v4t3k3y1d0123456789abcdef01234567"
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "spot-test",
    "private_key_id": FAKE_PRIVATE_ID,
    "private_key": f"-----BEGIN PRIVATE KEY-----\n{FAKE_PRIVATE}\n-----END PRIVATE KEY-----\n",
    "client_email": "runner@spot-test.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}
NEEDLES = [FAKE_SECRET, FAKE_TOKEN, FAKE_KEY_ID, FAKE_PRIVATE, FAKE_PRIVATE_ID]


def leaks(text: str | bytes, where: str) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [f"{where}: {n[:12]}..." for n in NEEDLES if n.encode() in data]


@pytest.fixture
def fake_credentials(monkeypatch, tmp_path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(SERVICE_ACCOUNT))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("GOOGLE_CREDENTIALS", json.dumps(SERVICE_ACCOUNT))


def test_no_credentials_in_logs_ledger_checkpoints_reports_xcom_or_artifacts(
    fake_credentials, tmp_path, caplog
):
    work = tmp_path / "run"
    caplog.set_level(logging.DEBUG)
    t0 = time.time()
    summary = run_demo(
        DemoConfig(
            steps=90,
            every=15,
            step_seconds=0.01,
            reclaim_at_steps=(25, 55),
            notice_window_s=1.0,
            workdir=work,
        )
    )
    assert [a["outcome"] for a in summary["attempts"]] == ["PREEMPTED", "PREEMPTED", "SUCCEEDED"]
    found: list[str] = []
    scanned = {"log records": 0, "files": 0, "bytes": 0}

    # every log record, with its arguments and exception text
    for r in caplog.records:
        scanned["log records"] += 1
        found += leaks(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}", f"log {r.name}")
    # every file of the run: ledger, checkpoints, manifests, worker output, job records
    files = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.name == "ledger.json" for p in files)
    assert any(p.name == "output.log" for p in files)
    for p in files:
        data = p.read_bytes()
        scanned["files"] += 1
        scanned["bytes"] += len(data)
        found += leaks(data, str(p.relative_to(work)))
    found += leaks(json.dumps(summary), "demo summary")
    print(f"\nlocal run done in {time.time() - t0:.1f}s")

    # the run report (what `spot-workflows report` prints and renders)
    uri = summary["checkpoint_uri"]
    report = run_report([uri], load_catalog())
    found += leaks(report.model_dump_json(), "report JSON")
    found += leaks(render_html(report), "report HTML")

    # the Airflow XCom summary, built from the same ledger (no Airflow import needed)
    from spot_workflows.airflow.steps import step_summary
    from spot_workflows.config import StepSpec

    ledger = Ledger.open(CheckpointStore(uri), "demo-train")
    spec = StepSpec(key="demo-train", command=["train"], checkpoint_uri=uri)
    xcom = step_summary(
        spec=spec,
        attempts=ledger.attempts,
        decision=Decision.succeed("done"),
        backend="local",
        conn_id="spot_local_default",
        console_url=None,
    )
    found += leaks(json.dumps(xcom, default=str), "Airflow XCom summary")

    # the Prefect artifact (in a subprocess: Prefect must not be imported in this session)
    found += leaks(prefect_markdown(uri, tmp_path), "Prefect artifact markdown and blocks")
    print(f"\nsecrets scan: {scanned}, leaks {len(found)}")
    assert found == [], f"credentials leaked: {found}"


def prefect_markdown(uri: str, home: Path) -> str:
    code = textwrap.dedent(
        f"""
        from spot_workflows.ledger import Ledger
        from spot_workflows.prefect.artifacts import ledger_markdown
        from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
        ledger = Ledger.open(CheckpointStore({uri!r}), "demo-train")
        print(ledger_markdown(step_key="demo-train", checkpoint_uri={uri!r}, backend="local",
                              attempts=ledger.attempts, status="SUCCEEDED"))
        # the blocks that hold credentials: repr, str and their JSON document
        from spot_workflows.prefect.cloud_blocks import AwsBatchBackendBlock, GcpBatchBackendBlock
        aws = AwsBatchBackendBlock(spot_queue="s", on_demand_queue="o",
                                   aws_access_key_id="id", aws_secret_access_key={FAKE_SECRET!r},
                                   aws_session_token={FAKE_TOKEN!r})
        gcp = GcpBatchBackendBlock(project="p", region="us-central1",
                                   service_account_info={json.dumps(SERVICE_ACCOUNT)!r})
        for b in (aws, gcp):
            print(repr(b), str(b), b.model_dump_json())
        """
    )
    env = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo-train" in proc.stdout
    return proc.stdout + proc.stderr


def test_airflow_connection_settings_never_show_credentials(fake_credentials):
    from spot_workflows.airflow.cloud import AwsSettings, GcpSettings

    aws = AwsSettings(spot_queue="s", on_demand_queue="o", aws_session_token=FAKE_TOKEN)
    gcp = GcpSettings(project="p", location="l", keyfile_dict=SERVICE_ACCOUNT)
    found = leaks(repr(aws) + str(aws), "AwsSettings repr") + leaks(
        repr(gcp) + str(gcp), "GcpSettings repr"
    )
    assert found == [], f"credentials leaked: {found}"


# -- IMDSv2 -----------------------------------------------------------------------------------


@pytest.fixture
def imds(monkeypatch):
    """The local metadata endpoint (IMDSv1 refused, like HttpTokens=required), recording every
    request in order as (method, path, token header or None)."""
    order: list[tuple[str, str, str | None]] = []
    original = local_metadata._Handler._dispatch

    def recording(self, method):
        order.append((method, self.path, self.headers.get("X-aws-ec2-metadata-token")))
        return original(self, method)

    monkeypatch.setattr(local_metadata._Handler, "_dispatch", recording)
    with LocalMetadataServer() as server:
        server.add_instance("i-0abc")
        yield server, order


def test_imdsv1_requests_are_refused_by_the_local_endpoint(imds):
    server, _ = imds
    url = server.endpoint_for("i-0abc") + "/latest/meta-data/spot/instance-action"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=5)  # IMDSv1: a GET without a token
    assert err.value.code == 401
    assert server.requests_seen("i-0abc")["GET /latest/meta-data/spot/instance-action (no token)"]


@pytest.mark.parametrize("source", ["aws", "auto"])
def test_the_poller_puts_for_a_token_first_and_sends_it_on_every_get(imds, source, caplog):
    server, order = imds
    caplog.set_level(logging.DEBUG)
    when = datetime.now(UTC) + timedelta(minutes=2)
    server.set_interruption("i-0abc", action="terminate", deadline=when)
    watcher = TerminationWatcher(
        source=source, aws_endpoint=server.endpoint_for("i-0abc"), poll_interval=0.05
    )
    deadline = time.time() + 10
    notice = None
    while notice is None and time.time() < deadline:
        watcher.poll_once()
        notice = watcher.notice
    assert notice is not None and notice.kind.value == "INTERRUPTION"
    aws = [(m, p, t) for m, p, t in order if "/latest/" in p]
    assert aws[0][0] == "PUT" and aws[0][1].endswith("/latest/api/token"), aws[:3]
    gets = [(p, t) for m, p, t in aws if m == "GET"]
    assert gets and all(t for _, t in gets), f"IMDSv1 (token-less) GETs: {gets}"
    seen = server.requests_seen("i-0abc")
    assert not [k for k in seen if k.endswith("(no token)")]
    # the token is a credential too: not in logs, not in the notice
    tokens = {t for _, t in gets}
    text = " ".join(r.getMessage() for r in caplog.records) + notice.model_dump_json()
    assert not [t for t in tokens if t in text]
