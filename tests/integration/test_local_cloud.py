"""The local spot cloud as a service: one daemon per state directory, shared by every process.

Real daemons, real supervisors and workers, real signals and HTTP; every process started here is
stopped by pid (the session fixture in tests/conftest.py also stops every daemon left under the
test temp dir).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend, LocalCloudClient
from spot_workflows.backends.local.jobs import alive, read_json
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import AttemptState, Capacity, Outcome
from spot_workflows.errors import StepFailedError
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def daemon_pid(state_dir: Path) -> int | None:
    return (read_json(state_dir / "daemon.json") or {}).get("pid")


def spec(tmp_path: Path, key: str, command: list[str], **kw) -> StepSpec:
    uri = (tmp_path / "ckpt" / key).as_uri()
    return StepSpec(key=key, command=command, checkpoint_uri=uri, **kw)


SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_two_processes_share_one_daemon_and_its_jobs(tmp_path):
    state = tmp_path / "cloud"
    a = LocalBackend(state_dir=state).start()
    job = a.submit(spec(tmp_path, "s", SLEEPER), job_name="s-1", attempt=1, capacity=Capacity.SPOT)
    # another process sees the same job through the same daemon
    code = (
        "import json, sys; from spot_workflows.backends.local import LocalBackend; "
        f"b = LocalBackend(state_dir={str(state)!r}); "
        f"print(json.dumps([j['job_id'] for j in b.jobs()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == [job], out.stderr
    assert a.find("s-1") == job
    wait_for(lambda: a.describe([job])[job].state is AttemptState.RUNNING)
    a.cancel(job, reason="test over")
    obs = wait_for(lambda: (o := a.describe([job])[job]).state is AttemptState.DONE and o)
    assert obs.outcome is Outcome.CANCELLED


def test_racing_starters_get_one_daemon(tmp_path):
    state = tmp_path / "cloud"
    code = (
        "import sys; from spot_workflows.backends.local import LocalCloudClient; "
        f"c = LocalCloudClient({str(state)!r}).connect(); "
        "print(c.call('GET', '/v1/status')['pid'])"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    pids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(pids) == 1 and pids != {""}
    assert int(pids.pop()) == daemon_pid(state)
    daemons = subprocess.run(
        ["pgrep", "-f", f"spot_workflows.backends.local.daemon --state-dir={state}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(daemons) == 1, daemons


def test_a_client_without_the_token_is_refused_and_the_token_file_is_private(tmp_path):
    state = tmp_path / "cloud"
    LocalBackend(state_dir=state).start()
    assert (state / "token").stat().st_mode & 0o777 == 0o600
    port = read_json(state / "daemon.json")["port"]
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/jobs", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401
    info = read_json(state / "daemon.json")
    assert "token" not in json.dumps(info)  # the token lives only in its 0600 file


def test_a_second_state_directory_gets_a_second_independent_daemon(tmp_path):
    a = LocalBackend(state_dir=tmp_path / "one").start()
    b = LocalBackend(state_dir=tmp_path / "two").start()
    assert daemon_pid(tmp_path / "one") != daemon_pid(tmp_path / "two")
    job = a.submit(spec(tmp_path, "s", SLEEPER), job_name="s-1", attempt=1, capacity=Capacity.SPOT)
    assert [j["job_id"] for j in a.jobs()] == [job] and b.jobs() == []
    assert b.find("s-1") is None
    b.shutdown()
    assert [j["job_id"] for j in a.jobs()] == [job]  # stopping one leaves the other alone
    a.cancel(job, reason="test over")


def test_a_daemon_killed_mid_job_and_restarted_re_adopts_live_jobs_and_records_dead_ones(
    tmp_path,
):
    state = tmp_path / "cloud"
    backend = LocalBackend(state_dir=state, market=ScheduledMarket(reclaims=[4.0]))
    backend.start()
    live = backend.submit(
        spec(tmp_path, "live", SLEEPER), job_name="live-1", attempt=1, capacity=Capacity.SPOT
    )
    doomed = backend.submit(
        spec(tmp_path, "doomed", SLEEPER), job_name="doomed-1", attempt=1, capacity=Capacity.SPOT
    )
    wait_for(
        lambda: all(
            o.state is AttemptState.RUNNING for o in backend.describe([live, doomed]).values()
        )
    )
    status = read_json(state / "jobs" / doomed / "status.json")
    first = daemon_pid(state)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first))
    os.killpg(status["supervisor_pid"], signal.SIGKILL)  # dies while nobody watches
    wait_for(lambda: not alive(status["supervisor_pid"]))
    # the next call starts a new daemon, which adopts both jobs
    obs = backend.describe([live, doomed])
    assert daemon_pid(state) not in (None, first)
    assert obs[live].state is AttemptState.RUNNING
    dead = wait_for(
        lambda: (o := backend.describe([doomed])[doomed]).state is AttemptState.DONE and o
    )
    assert dead.outcome is Outcome.INFRA_ERROR and "died" in dead.reason
    # the re-adopted job is still reclaimed on schedule, its notice on the new daemon's endpoint
    done = wait_for(
        lambda: (o := backend.describe([live])[live]).state is AttemptState.DONE and o, timeout=30
    )
    assert done.outcome is Outcome.PREEMPTED
    row = next(j for j in backend.jobs() if j["job_id"] == live)
    assert row["reclaimed"] and row["notice_served"]


def test_stop_ends_every_job_and_records_it(tmp_path):
    state = tmp_path / "cloud"
    backend = LocalBackend(state_dir=state).start()
    job = backend.submit(
        spec(tmp_path, "s", SLEEPER), job_name="s-1", attempt=1, capacity=Capacity.SPOT
    )
    done = backend.submit(
        spec(tmp_path, "quick", [sys.executable, "-c", "pass"]),
        job_name="quick-1",
        attempt=1,
        capacity=Capacity.ON_DEMAND,
    )
    wait_for(lambda: backend.describe([job])[job].state is AttemptState.RUNNING)
    wait_for(lambda: backend.describe([done])[done].state is AttemptState.DONE)
    supervisor = read_json(state / "jobs" / job / "status.json")["supervisor_pid"]
    daemon = daemon_pid(state)
    out = subprocess.run(
        [sys.executable, "-m", "spot_workflows.cli", "local", "stop", f"--state-dir={state}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "1 job" in out.stdout, out.stderr
    assert not alive(daemon) and not alive(supervisor)
    row = read_json(state / "jobs" / job / "status.json")
    assert row["exit_code"] is not None  # the exit was recorded before the daemon left
    from spot_workflows.backends.local.jobs import observe

    assert observe(state / "jobs" / job).outcome is Outcome.CANCELLED
    assert observe(state / "jobs" / done).outcome is Outcome.SUCCEEDED  # a finished job stays so
    status = subprocess.run(
        [sys.executable, "-m", "spot_workflows.cli", "local", "status", f"--state-dir={state}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1 and "no local spot cloud" in status.stdout


def test_jobs_json_lists_step_key_attempt_capacity_state_and_exit_code(tmp_path):
    state = tmp_path / "cloud"
    backend = LocalBackend(state_dir=state).start()
    quick = spec(tmp_path, "quick", [sys.executable, "-c", "raise SystemExit(3)"])
    job = backend.submit(quick, job_name="quick-2", attempt=2, capacity=Capacity.ON_DEMAND)
    wait_for(lambda: backend.describe([job])[job].state is AttemptState.DONE)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spot_workflows.cli",
            "local",
            "jobs",
            "--json",
            f"--state-dir={state}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    (row,) = json.loads(out.stdout)
    assert (row["step_key"], row["attempt"], row["capacity"]) == ("quick", 2, "ON_DEMAND")
    assert (row["state"], row["outcome"], row["exit_code"]) == ("DONE", "APP_ERROR", 3)


# -- start failures: named, never NO_CAPACITY, never a hang ------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "wrap", "expected"),
    [
        (["no-such-program-xyz"], {}, False, "No such file or directory: 'no-such-program-xyz'"),
        (["no-such-program-xyz"], {}, True, "exit code 127 (command not found)"),
        ([sys.executable, "-c", "pass"], {"A=B": "x"}, False, "illegal environment variable"),
        ([str(ROOT / "README.md")], {}, False, "Permission denied"),
    ],
    ids=["missing-executable", "missing-under-spot-run", "bad-env-name", "not-executable"],
)
def test_a_job_that_cannot_start_is_an_app_error_naming_the_cause_and_the_log(
    tmp_path, command, env, wrap, expected
):
    backend = LocalBackend(state_dir=tmp_path / "cloud", wrap=wrap)
    step = StepSpec(key="broken", command=command, checkpoint_uri=(tmp_path / "c").as_uri())
    step = step.model_copy(update={"env": env})  # StepSpec refuses "A=B"; the backend copes too
    runner = StepRunner(
        spec=step, backend=backend, policy=SpotPolicy(app_error_retries=0), poll_interval=0.05
    )
    started = time.monotonic()
    with pytest.raises(StepFailedError) as failed:
        runner.run()
    assert time.monotonic() - started < 30
    (attempt,) = runner.ledger.attempts
    assert attempt.outcome is Outcome.APP_ERROR, attempt
    assert expected in attempt.reason and "output.log" in attempt.reason
    assert expected in str(failed.value)


def test_python_at_the_head_of_a_command_is_this_interpreter(tmp_path):
    backend = LocalBackend(state_dir=tmp_path / "cloud", wrap=False)
    step = spec(tmp_path, "py", ["python", "-c", "import sys; print(sys.executable)"])
    job = backend.submit(step, job_name="py-1", attempt=1, capacity=Capacity.ON_DEMAND)
    wait_for(lambda: backend.describe([job])[job].state is AttemptState.DONE)
    assert backend.log_path(job).read_text().strip() == sys.executable


def test_the_market_is_per_step_key_whichever_process_submits(tmp_path):
    """'Reclaim the first spot attempt at 1 s' holds for each step, and a second client (another
    process, in real use) does not reset the count of a step the first one started."""
    state = tmp_path / "cloud"
    market = ScheduledMarket(reclaims=[1.0])
    a, b = (
        LocalBackend(state_dir=state, market=market),
        LocalBackend(state_dir=state, market=market),
    )
    first = a.submit(
        spec(tmp_path, "x", SLEEPER), job_name="x-1", attempt=1, capacity=Capacity.SPOT
    )
    other = b.submit(
        spec(tmp_path, "y", SLEEPER), job_name="y-1", attempt=1, capacity=Capacity.SPOT
    )
    for backend, job in ((a, first), (b, other)):
        obs = wait_for(
            lambda b=backend, j=job: (o := b.describe([j])[j]).state is AttemptState.DONE and o
        )
        assert obs.outcome is Outcome.PREEMPTED
    second = b.submit(
        spec(tmp_path, "x", SLEEPER), job_name="x-2", attempt=2, capacity=Capacity.SPOT
    )
    wait_for(lambda: b.describe([second])[second].state is AttemptState.RUNNING)
    time.sleep(2.0)  # past where a fresh market would have reclaimed it
    assert b.describe([second])[second].state is AttemptState.RUNNING
    b.cancel(second, reason="test over")


# -- Ctrl-C ----------------------------------------------------------------------------------


def _ctrl_c_as_in_a_terminal() -> None:
    # A suite started in the background by a non-interactive shell (``cmd &``) inherits SIGINT
    # ignored, and Python then leaves Ctrl-C ignored; a terminal's foreground command has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _demo(workdir: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "spot_workflows.cli", "demo", "--json", f"--workdir={workdir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
        **kw,
    )


def _tree(pid: int) -> list[int]:
    """Every process whose session is ``pid``'s or whose command names the workdir."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split()[1] == str(pid)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_demo_stops_everything_records_the_stop_and_a_rerun_resumes(tmp_path, sig):
    workdir = tmp_path / "demo"
    demo = _demo(workdir)
    ledger_path = workdir / "checkpoints" / "demo-train" / "ledger.json"
    store = CheckpointStore((workdir / "checkpoints" / "demo-train").as_uri())

    def training() -> bool:
        latest = store.latest() if (workdir / "checkpoints").exists() else None
        return latest is not None and latest.step >= 20

    wait_for(training, timeout=60)
    os.killpg(demo.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 130, err
    assert "interrupted: attempt 1 stopped" in err and "run the same command again" in err
    assert "Traceback" not in err and "Aborted" not in err
    wait_for(lambda: not _tree(demo.pid), timeout=15)
    cloud = workdir / "backend"
    assert not alive(daemon_pid(cloud)) if daemon_pid(cloud) else True
    jobs = json.loads(json.dumps([read_json(p) for p in (cloud / "jobs").glob("*/status.json")]))
    assert jobs and all(not alive(s["supervisor_pid"]) for s in jobs)
    ledger = Ledger.open(CheckpointStore(store.uri), "demo-train")
    (stopped,) = ledger.attempts
    assert stopped.outcome is Outcome.STOPPED and "stopped by the user" in stopped.reason
    assert ledger_path.exists()

    rerun = _demo(workdir)
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    summary = json.loads(out)
    assert summary["checksums_match"] and summary["attempts"][1]["resumed_from_step"] > 0
    assert not _tree(rerun.pid)


def test_client_gives_a_clear_error_when_no_daemon_runs_and_start_is_off(tmp_path):
    with pytest.raises(Exception, match="spot-workflows local serve"):
        LocalCloudClient(tmp_path / "none", start=False).connect()


def test_stopped_by_the_user_is_resumable_not_a_failure(tmp_path):
    """A run interrupted in-process resumes on the next run instead of failing."""
    backend = LocalBackend(state_dir=tmp_path / "cloud")
    step = spec(tmp_path, "resumable", [sys.executable, "-c", "import time; time.sleep(1)"])
    runner = StepRunner(spec=step, backend=backend, poll_interval=0.05)
    runner.tick()
    wait_for(lambda: runner.ledger.live is not None and runner.ledger.live.job_id)
    error = runner.interrupt("stopped by the user (test)")
    assert "attempt 1 stopped" in str(error)
    assert runner.ledger.attempts[-1].outcome is Outcome.STOPPED
    again = StepRunner(spec=step, backend=backend, poll_interval=0.05).run()
    assert again.succeeded and [a.outcome for a in again.attempts] == [
        Outcome.STOPPED,
        Outcome.SUCCEEDED,
    ]


def test_on_demand_capacity_has_a_finite_default_timeout_on_the_local_backend(tmp_path):
    backend = LocalBackend(state_dir=tmp_path / "cloud")
    step = spec(tmp_path, "od", [sys.executable, "-c", "pass"])
    assert StepRunner(spec=step, backend=backend).policy.on_demand_capacity_timeout_s == 300.0
    mine = SpotPolicy(on_demand_capacity_timeout_s=42)
    assert StepRunner(spec=step, backend=backend, policy=mine).policy == mine  # yours wins
