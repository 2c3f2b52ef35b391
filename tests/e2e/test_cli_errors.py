"""The installed ``spot-workflows`` command, run as a user would, with bad values: one line on
stderr, a non-zero exit, no traceback, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "spot-workflows")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}  # what a pipe or CI gives rich
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *says: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for word in says:
        assert word in lines[0], lines[0]


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    (tmp_path / "notalist.json").write_text(json.dumps({"data": "notalist"}))
    (tmp_path / "mixed.json").write_text(json.dumps({"data": [1, "x", None]}))
    (tmp_path / "good.json").write_text(
        json.dumps({"metadata": {"gap_seconds": 3600}, "data": [1, 0] * 60})
    )
    return tmp_path


SIM = ("--work-hours", "1", "--deadline-hours", "2", "--restart-hours", "0")

CASES = {
    "demo-steps-negative": (["demo", "--steps", "-5"], ["--steps", "1<=x"]),
    "demo-steps-zero": (["demo", "--steps", "0"], ["--steps"]),
    "demo-unknown-option": (["demo", "--bogus"], ["--bogus"]),
    "simulate-trace-not-a-list": (
        ["simulate", "--trace", "{t}/notalist.json", *SIM],
        ["data must be a list"],
    ),
    "simulate-trace-mixed": (["simulate", "--trace", "{t}/mixed.json", *SIM], ["data[1]"]),
    "simulate-work-nan": (
        ["simulate", "--trace", "{t}/good.json", "--work-hours", "nan"]
        + ["--deadline-hours", "2", "--restart-hours", "0"],
        ["--work-hours", "finite"],
    ),
    "simulate-deadline-inf": (
        ["simulate", "--trace", "{t}/good.json", "--work-hours", "1"]
        + ["--deadline-hours", "inf", "--restart-hours", "0"],
        ["--deadline-hours", "finite"],
    ),
    "simulate-infeasible-deadline": (
        ["simulate", "--trace", "{t}/good.json", "--work-hours", "48"]
        + ["--deadline-hours", "10", "--restart-hours", "0.1"],
        ["infeasible", "D >= W + d"],
    ),
    "simulate-starts-zero": (
        ["simulate", "--trace", "{t}/good.json", *SIM, "--starts", "0"],
        ["--starts"],
    ),
    "simulate-unknown-policy": (
        ["simulate", "--trace", "{t}/good.json", *SIM, "--policy", "magic"],
        ["unknown escalation strategy"],
    ),
    "simulate-missing": (["simulate", "--policy", "deadline"], ["--trace"]),
    "aws-account-id-short": (
        ["aws", "bootstrap", "--print-iam-policy", "--account-id", "12345"],
        ["--account-id", "12-digit"],
    ),
    "aws-name-prefix": (
        ["aws", "bootstrap", "--print-iam-policy", "--name-prefix", "bad prefix!"],
        ["--name-prefix"],
    ),
    "aws-name-prefix-bootstrap": (
        ["aws", "bootstrap", "--region", "us-east-1", "--dry-run", "--name-prefix", "bad prefix!"],
        ["--name-prefix"],
    ),
    "aws-bad-bucket": (
        ["aws", "bootstrap", "--print-iam-policy", "--checkpoint-bucket", "gs://b/p"],
        ["--checkpoint-bucket"],
    ),
    "ledger-no-ledger": (["ledger", "file://{t}/nothing", "--key", "k"], ["no ledger at"]),
    "report-no-ledger": (["report", "file://{t}/nothing"], ["no attempt ledger"]),
    "report-not-a-uri": (["report", "nothere"], ["checkpoint URI"]),
    "report-html-missing-dir": (
        ["report", "file://{t}", "--html", "{t}/no/such/dir/r.html"],
        ["--html", "does not exist"],
    ),
    "report-html-is-a-dir": (["report", "file://{t}", "--html", "{t}"], ["--html", "directory"]),
    "local-idle-exit-nan": (
        ["local", "serve", "--state-dir", "{t}/state", "--idle-exit-s", "nan"],
        ["--idle-exit-s"],
    ),
}


@pytest.mark.parametrize(("args", "says"), list(CASES.values()), ids=list(CASES))
def test_a_user_error_is_one_line_on_stderr(traces: Path, args: list[str], says: list[str]):
    before = sorted(p.name for p in traces.iterdir())
    proc = run(*[a.replace("{t}", str(traces)) for a in args])
    assert_one_line_error(proc, *says)
    assert sorted(p.name for p in traces.iterdir()) == before  # nothing written


def test_ledger_without_a_ledger_exits_1(tmp_path: Path):
    proc = run("ledger", f"file://{tmp_path}/none", "--key", "k")
    assert proc.returncode == 1
    assert_one_line_error(proc, f"no ledger at file://{tmp_path}/none/ledger.json")


def test_demo_workdir_that_is_a_file_is_refused_before_the_demo(tmp_path: Path):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    proc = run("demo", "--workdir", str(target))
    assert_one_line_error(proc, "--workdir", "is a file")
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_demo_workdir_that_is_not_writable_is_refused(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = run("demo", "--workdir", str(locked / "w"))
    finally:
        locked.chmod(0o700)
    assert_one_line_error(proc, "--workdir")


def test_demo_workdir_that_cannot_be_created_is_refused(tmp_path: Path):
    (tmp_path / "f").write_text("")
    proc = run("demo", "--workdir", str(tmp_path / "f" / "sub"))
    assert_one_line_error(proc, "--workdir")


def test_the_iam_policy_takes_an_s3_uri_for_the_checkpoint_bucket():
    proc = run("aws", "bootstrap", "--print-iam-policy", "--checkpoint-bucket", "s3://bkt/p")
    assert proc.returncode == 0, proc.stderr
    st = {s["Sid"]: s for s in json.loads(proc.stdout)["Statement"]}
    assert st["Checkpoints"]["Resource"] == "arn:aws:s3:::bkt/p/*"
    assert st["CheckpointListing"]["Resource"] == "arn:aws:s3:::bkt"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """One short real demo: a ledger with a reclaim to report on."""
    workdir = tmp_path_factory.mktemp("demo")
    proc = run("demo", "--json", "--workdir", str(workdir), "--steps", "150")
    assert proc.returncode == 0, proc.stderr
    return workdir / "checkpoints"


def test_report_skips_a_stray_file_and_says_so(demo_run: Path):
    stray = demo_run / "stray.txt"
    stray.write_text("not a step")
    try:
        proc = run("report", f"file://{demo_run}")
    finally:
        stray.unlink()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "skipped" in proc.stderr and "stray.txt" in proc.stderr
    assert "demo-train" in proc.stdout


def test_report_table_is_whole_off_a_terminal(demo_run: Path):
    proc = run("report", f"file://{demo_run}")  # stdout is a pipe
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    row = next(line for line in proc.stdout.splitlines() if "demo-train" in line)
    money = [cell.strip() for cell in row.split("│") if cell.strip().startswith("$")]
    assert len(money) == 2 and all(len(m.split(".")[-1]) == 4 for m in money), row


def test_ledger_table_is_whole_off_a_terminal(demo_run: Path):
    proc = run("ledger", f"file://{demo_run}/demo-train", "--key", "demo-train")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout and "PREEMPTED" in proc.stdout, proc.stdout
