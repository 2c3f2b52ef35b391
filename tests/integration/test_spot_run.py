"""``spot-run`` as a real process: real children, real signals, real metadata HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spot_workflows.backends.local.metadata import LocalMetadataServer
from spot_workflows.core.outcomes import RESERVED_EXIT_CODE, NoticeKind, TerminationNotice
from spot_workflows.runtime.worker.entrypoint import main

SPOT_RUN = [sys.executable, "-m", "spot_workflows.runtime.worker.entrypoint"]

# The child: announces readiness through a file, then reacts to SIGTERM as told by argv[2].
CHILD = r"""
import os, signal, sys, time
marker, mode = sys.argv[1], sys.argv[2]
def on_term(signum, frame):
    path = os.environ["SPOT_NOTICE_FILE"]
    notice = open(path).read() if os.path.exists(path) else ""
    open(marker, "w").write(notice or "no notice file")
    sys.exit(0 if mode == "finish" else 75)
if mode in ("checkpoint", "finish"):
    signal.signal(signal.SIGTERM, on_term)
elif mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode.startswith("exit"):
    sys.exit(int(mode[4:]))
elif mode == "selfkill":
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "env":
    open(marker, "w").write(os.environ.get("SPOT_NOTICE_FILE", ""))
    sys.exit(0)
open(marker + ".ready", "w").write(str(os.getpid()))
time.sleep(60)
"""


@pytest.fixture
def server():
    with LocalMetadataServer() as srv:
        srv.add_instance("i-0abc")
        yield srv


@pytest.fixture
def child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


def start(
    child: Path, tmp_path: Path, mode: str, *options: str, env: dict | None = None
) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SPOT_", "AWS_", "GCE_"))}
    base.update(env or {})
    command = [*SPOT_RUN, "--poll", "0.1", *options, "--", sys.executable, str(child)]
    return subprocess.Popen(
        [*command, str(tmp_path / "marker"), mode],
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def local_env(server: LocalMetadataServer, tmp_path: Path) -> dict:
    return {
        "SPOT_NOTICE_SOURCE": "local",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": server.endpoint_for("i-0abc"),
        "SPOT_NOTICE_FILE": str(tmp_path / "notice.json"),
    }


def wait_ready(tmp_path: Path, proc: subprocess.Popen, timeout: float = 10) -> None:
    ready = tmp_path / "marker.ready"
    end = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "child never became ready"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 15) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_notice_reaches_the_child_which_checkpoints_and_exits_75(server, child, tmp_path):
    proc = start(child, tmp_path, "checkpoint", env=local_env(server, tmp_path))
    wait_ready(tmp_path, proc)
    deadline = (datetime.now(UTC) + timedelta(seconds=120)).replace(microsecond=0)
    server.set_interruption("i-0abc", deadline=deadline)
    code, err = finish(proc)
    assert code == RESERVED_EXIT_CODE, err
    notice = TerminationNotice.model_validate_json((tmp_path / "marker").read_text())
    assert notice.kind is NoticeKind.INTERRUPTION and notice.deadline == deadline
    assert notice.instance_id == "i-0abc"
    written = TerminationNotice.model_validate_json((tmp_path / "notice.json").read_text())
    assert written == notice  # the file was complete before the child got SIGTERM
    assert f"INTERRUPTION notice from local, deadline {deadline.isoformat()}" in err
    assert "asked child to checkpoint" in err and "did not confirm" not in err
    seen = server.requests_seen("i-0abc")
    assert not [key for key in seen if key.endswith("token)")]  # IMDSv2 only


def test_gce_notice_through_gce_metadata_host(server, child, tmp_path):
    env = {
        "SPOT_NOTICE_SOURCE": "gcp",
        "GCE_METADATA_HOST": server.endpoint_for("i-0abc").removeprefix("http://"),
    }
    proc = start(child, tmp_path, "checkpoint", env=env)
    wait_ready(tmp_path, proc)
    server.set_gce_preempted("i-0abc", True)
    code, err = finish(proc)
    assert code == RESERVED_EXIT_CODE, err
    assert json.loads((tmp_path / "marker").read_text())["source"] == "gcp"


def test_child_ignoring_sigterm_is_killed_after_grace(server, child, tmp_path):
    proc = start(child, tmp_path, "ignore", "--grace", "0.5", env=local_env(server, tmp_path))
    wait_ready(tmp_path, proc)
    server.set_interruption("i-0abc", deadline=datetime.now(UTC) + timedelta(seconds=120))
    started = time.monotonic()
    code, err = finish(proc)
    assert code == RESERVED_EXIT_CODE, err
    assert time.monotonic() - started < 5
    assert "child did not confirm a checkpoint (exit 137)" in err


def test_without_grace_the_notice_deadline_bounds_the_child(server, child, tmp_path):
    proc = start(child, tmp_path, "ignore", env=local_env(server, tmp_path))
    wait_ready(tmp_path, proc)
    server.set_interruption("i-0abc", deadline=datetime.now(UTC) + timedelta(seconds=2))
    started = time.monotonic()
    code, err = finish(proc)
    assert code == RESERVED_EXIT_CODE and "exit 137" in err
    assert 0.5 < time.monotonic() - started < 4


def test_child_finishing_after_the_notice_exits_0(server, child, tmp_path):
    proc = start(child, tmp_path, "finish", env=local_env(server, tmp_path))
    wait_ready(tmp_path, proc)
    server.set_gce_preempted("i-0abc", True)
    code, err = finish(proc)
    assert code == 0, err


@pytest.mark.parametrize(
    "mode, expected", [("exit0", 0), ("exit3", 3), ("exit75", 75), ("selfkill", 137)]
)
def test_without_a_notice_the_child_exit_code_passes_through(
    server, child, tmp_path, mode, expected
):
    proc = start(child, tmp_path, mode, env=local_env(server, tmp_path))
    code, err = finish(proc)
    assert code == expected, err
    assert "notice" not in err and not (tmp_path / "notice.json").exists()


def test_wrapper_sigterm_is_forwarded_as_a_notice(child, tmp_path):
    # no metadata endpoint answers here: spot-run relies on SIGTERM alone
    proc = start(child, tmp_path, "checkpoint", "--source", "auto", env=dead_metadata())
    wait_ready(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == RESERVED_EXIT_CODE, err
    notice = TerminationNotice.model_validate_json((tmp_path / "marker").read_text())
    assert notice.kind is NoticeKind.SIGTERM and notice.source == "signal"
    assert notice.deadline is not None
    assert "SIGTERM notice from signal" in err


def test_second_sigterm_kills_the_child_group(child, tmp_path):
    proc = start(child, tmp_path, "ignore", "--grace", "30", env=dead_metadata())
    wait_ready(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == RESERVED_EXIT_CODE and time.monotonic() - started < 5
    assert "child did not confirm a checkpoint (exit 137)" in err


def test_a_notice_file_is_provided_when_none_is_set(child, tmp_path):
    proc = start(child, tmp_path, "env", env=dead_metadata())
    code, err = finish(proc)
    assert code == 0, err
    path = (tmp_path / "marker").read_text()
    assert path.endswith("notice.json") and not Path(path).parent.exists()  # cleaned up


def test_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as info:
        main(["--poll", "0.1"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["--signal", "NOPE", "--", "true"])
    assert main(["--source", "aws", "--", str(tmp_path / "no-such-program")]) == 127
    assert "cannot start" in capsys.readouterr().err
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    assert main(["--source", "local", "--", "true"]) == 2  # local needs an endpoint


def dead_metadata() -> dict:
    return {
        "SPOT_NOTICE_SOURCE": "auto",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
        "GCE_METADATA_HOST": "127.0.0.1:9",
    }
