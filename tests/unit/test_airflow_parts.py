"""The Airflow adapter's pure parts (no Airflow import): step keys, parsing, watches, links."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spot_workflows.airflow.connections import ConnectionInfo, checkpoint_root, console_url
from spot_workflows.airflow.steps import (
    build_spec,
    default_step_key,
    parse_command,
    parse_policy,
    stop_as_watcher,
    watch_attempt,
    watcher_id,
)
from spot_workflows.airflow.watch import TerminationWatch, normalize_kinds
from spot_workflows.backends.local.events import LocalEventSource, append_event
from spot_workflows.config import validate_step_key
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.errors import ConfigError
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


def test_these_parts_do_not_import_airflow():
    code = (
        "import sys, spot_workflows.airflow.steps, spot_workflows.airflow.watch, "
        "spot_workflows.airflow.connections; from spot_workflows.airflow import get_provider_info; "
        "get_provider_info(); sys.exit('airflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@given(
    dag_id=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,60}", fullmatch=True),
    task_id=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,60}", fullmatch=True),
    run_id=st.text(min_size=1, max_size=250),
    map_index=st.integers(-1, 5000),
)
def test_default_step_key_is_always_a_valid_stable_key(dag_id, task_id, run_id, map_index):
    key = default_step_key(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
    assert validate_step_key(key) == key
    assert key == default_step_key(
        dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index
    )


def test_default_step_key_keeps_runs_apart_when_it_has_to_rewrite_them():
    a = default_step_key(dag_id="d", task_id="t", run_id="manual__2026-01-01T00:00:00+00:00")
    b = default_step_key(dag_id="d", task_id="t", run_id="manual__2026-01-01T00-00-00-00-00")
    assert a.startswith("d.t.manual__2026-01-01T00-00-00-00-00-") and a != b
    assert default_step_key(dag_id="d", task_id="t", run_id="r1") == "d.t.r1"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"preemption_budget": -1}, "preemption_budget: Input should be greater than or equal"),
        ('{"max_attempts": 0}', "max_attempts: Input should be greater than or equal to 1"),
        ("{'capacity_timeout_s': 'soon'}", "capacity_timeout_s: Input should be a valid number"),
        ({"preemtion_budget": 2}, "preemtion_budget: Extra inputs are not permitted"),
    ],
)
def test_bad_policies_name_the_field(value, field):
    with pytest.raises(ConfigError, match=f"invalid spot policy: {field}"):
        parse_policy(value)


def test_policies_come_from_dicts_json_and_rendered_python_literals():
    assert parse_policy("{'preemption_budget': '2'}").preemption_budget == 2
    assert parse_policy('{"start_on": "ON_DEMAND"}').start_on is Capacity.ON_DEMAND
    assert parse_policy(None) == parse_policy("") == parse_policy({})
    with pytest.raises(ConfigError, match="policy must be a mapping"):
        parse_policy("preemption_budget=2")


def test_commands_and_specs():
    assert parse_command("python -m x --a 'b c'") == ["python", "-m", "x", "--a", "b c"]
    assert parse_command("['python', '-c', 'print(1)']") == ["python", "-c", "print(1)"]
    spec = build_spec(
        key="k",
        command=["run", 1],
        checkpoint_uri="file:///tmp/x",
        env="{'A': 1}",
        resources={"gpus": "2", "memory_mib": 1024},
    )
    assert (spec.command, spec.env, spec.gpus) == (["run", "1"], {"A": "1"}, 2)
    with pytest.raises(ConfigError, match=r"unknown resources field\(s\) \['gpu'\]"):
        build_spec(key="k", command="x", checkpoint_uri="file:///x", env=None, resources={"gpu": 1})
    with pytest.raises(ConfigError, match="invalid step: checkpoint_uri: .*must start with one of"):
        build_spec(key="k", command="x", checkpoint_uri="/no/scheme", env=None, resources=None)
    with pytest.raises(ConfigError, match="SPOT_ATTEMPT.*reserved"):
        build_spec(
            key="k",
            command="x",
            checkpoint_uri="file:///x",
            env={"SPOT_ATTEMPT": 1},
            resources=None,
        )


def test_console_links_and_checkpoint_roots():
    aws = ConnectionInfo(
        "aws_spot", "aws", {"region_name": "eu-west-1", "checkpoint_root": "s3://b/c"}
    )
    assert console_url(aws, "4f0c-9a") == (
        "https://eu-west-1.console.aws.amazon.com/batch/home?region=eu-west-1#jobs/detail/4f0c-9a"
    )
    assert checkpoint_root(aws) == "s3://b/c"
    gcp = ConnectionInfo("g", "google_cloud_platform", {})
    assert console_url(gcp, "projects/p1/locations/us-central1/jobs/train-a1") == (
        "https://console.cloud.google.com/batch/jobsDetail/regions/us-central1/jobs/train-a1"
        "/details?project=p1"
    )
    with pytest.raises(ConfigError, match="no 'checkpoint_root' extra: set it to a gs:// prefix"):
        checkpoint_root(gcp)
    assert console_url(ConnectionInfo("l", "spot_local"), "local-1") is None
    with pytest.raises(ConfigError, match="has type 'http'"):
        console_url(ConnectionInfo("h", "http"), "x")


def test_event_source_tails_the_file_and_skips_torn_and_old_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    source = LocalEventSource(path=path, since=100.0)
    assert source.poll() == []  # no file yet
    append_event(path, {"event": "notice", "at": 50.0, "job_id": "old"})
    append_event(path, {"event": "sigterm", "at": 150.0, "job_id": "j1", "step_key": "s"})
    with open(path, "a") as f:
        f.write('not json\n{"event": "notice", "at": 160.0, "job_id": "j2"')  # torn last line
    assert [(n.kind.value, n.job_id) for n in source.poll()] == [("PREEMPTED", "j1")]
    with open(path, "a") as f:
        f.write(', "deadline": 162.0}\n')
    [notice] = source.poll()
    assert (notice.kind.value, notice.job_id, notice.deadline.timestamp()) == (
        "INTERRUPTION",
        "j2",
        162.0,
    )
    assert source.poll() == []


def test_watch_reads_the_ledger_for_preemptions_and_for_the_end(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}/ckpt")
    ledger = Ledger.open(store, "step-1")
    source = LocalEventSource(path=tmp_path / "none.jsonl")
    since = time.time() - 1
    watch = TerminationWatch(
        source=source,
        step_key="step-1",
        job_queue=None,
        kinds=["PREEMPTED"],
        since=since,
        checkpoint_uri=store.uri,
    )
    assert watch.check() == []  # no ledger yet: keep waiting
    a1 = ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
    ledger.finish(a1, Outcome.PREEMPTED, now=time.time(), reason="Host local terminated.")
    [hit] = watch.check()
    assert (hit["terminated"], hit["kind"], hit["source"]) == (True, "PREEMPTED", "ledger")
    assert watch.check() == []  # reported once; the step may still go on
    a2 = ledger.begin(capacity=Capacity.ON_DEMAND, backend="local", now=time.time())
    ledger.update(a2.model_copy(update={"state": AttemptState.RUNNING}))
    assert watch.check() == []
    ledger.finish(a2, Outcome.SUCCEEDED, now=time.time(), reason="exit code 0")
    [end] = watch.check()
    assert end == {
        "terminated": False,
        "step_key": "step-1",
        "reason": "step step-1 finished: attempt 2 SUCCEEDED",
    }


def test_the_newest_try_watches_the_attempt_and_only_it_may_stop_the_job(tmp_path):
    ledger = Ledger.open(CheckpointStore(f"file://{tmp_path}/ckpt"), "d.t.r")
    a1 = ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
    a1 = ledger.set_job_id(a1, "job-1")
    try1, try2 = (
        watcher_id(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=n) for n in (1, 2)
    )
    assert try2 == "d/t/r/-1#try2"
    assert watch_attempt(ledger, a1, try1).watcher == try1
    writes = ledger.writes
    assert watch_attempt(ledger, a1, try1).watcher == try1 and ledger.writes == writes  # no write
    assert watch_attempt(ledger, a1, try2).watcher == try2  # a clear or a retry: a newer try
    assert watch_attempt(ledger, a1, try1).watcher == try2  # a zombie try does not take it back
    # the older try is stopped: it must leave the job alone, and write nothing
    why = stop_as_watcher(ledger, "job-1", try1)
    assert why is not None and "watched by d/t/r/-1#try2" in why
    assert ledger.refresh().attempt(1).stopping is None
    # the watching try is stopped: the attempt is recorded as stopping (resumable) first
    assert stop_as_watcher(ledger, "job-1", try2) is None
    assert ledger.refresh().attempt(1).stopping is Outcome.STOPPED
    ledger.finish(ledger.attempt(1), Outcome.STOPPED, now=time.time(), reason="stopped")
    assert "already ended" in stop_as_watcher(ledger, "job-1", try2)


def test_notice_kinds_are_checked():
    assert normalize_kinds("preempted, interruption") == ("INTERRUPTION", "PREEMPTED")
    with pytest.raises(ConfigError, match="unknown notice kind 'EVICTED'"):
        normalize_kinds(["EVICTED"])
    assert json.loads(json.dumps(normalize_kinds(["REBALANCE"]))) == ["REBALANCE"]


def test_aws_connections_build_an_aws_batch_backend_with_the_connection_keys():
    from spot_workflows.airflow.connections import build_backend
    from spot_workflows.backends.aws_batch import AwsBatchBackend

    info = ConnectionInfo(
        "aws_spot",
        "aws",
        {"region_name": "eu-west-1", "spot_queue": "q-spot", "on_demand_queue": "q-od"},
        login="AKIAEXAMPLEKEY",
        password="secret",
    )
    backend = build_backend(info)
    assert isinstance(backend, AwsBatchBackend)
    assert backend.region == "eu-west-1"
    assert backend.queues == {Capacity.SPOT: "q-spot", Capacity.ON_DEMAND: "q-od"}
    creds = backend.batch._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("AKIAEXAMPLEKEY", "secret")
    with pytest.raises(ConfigError, match="connection 'aws_spot' extras: on_demand_queue: Field"):
        build_backend(ConnectionInfo("aws_spot", "aws", {"spot_queue": "q"}))


def test_gcp_connections_name_what_is_missing():
    from spot_workflows.airflow.connections import build_backend

    with pytest.raises(ConfigError, match="connection 'g' extras: region: Field required"):
        build_backend(ConnectionInfo("g", "google_cloud_platform", {"project": "p"}))
