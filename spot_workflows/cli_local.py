"""``spot-workflows local``: run and inspect the local spot cloud (one daemon per state directory)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from spot_workflows.backends.local import STATE_DIR_ENV, LocalCloudClient, default_state_dir
from spot_workflows.cli_errors import fail
from spot_workflows.errors import SpotWorkflowsError

console = Console(stderr=True)
out = Console() if sys.stdout.isatty() else Console(width=200)
"""Tables on stdout: the terminal's width, or a wide one off a terminal (no cut-off columns)."""


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"State directory [default: ${STATE_DIR_ENV}, else ~/.spot-workflows/local].",
)


def _dir(state_dir: Path | None) -> Path:
    return (state_dir.expanduser().resolve()) if state_dir else default_state_dir()


def _client(state_dir: Path | None) -> LocalCloudClient:
    """A client of a running daemon; exits 1 with one line when none runs."""
    client = LocalCloudClient(_dir(state_dir), start=False)
    try:
        return client.connect()
    except SpotWorkflowsError as exc:
        fail(str(exc), 1)


@click.group("local")
def local() -> None:
    """The local spot cloud: jobs, spot markets and metadata endpoints shared by every process."""


@local.command()
@state_dir_option
@click.option(
    "--idle-exit-s", type=float, default=None, help="Exit after this long with no job or request."
)
def serve(state_dir: Path | None, idle_exit_s: float | None) -> None:
    """Run the daemon in the foreground (clients also start one on first use)."""
    from spot_workflows.backends.local.daemon import main as daemon_main

    if idle_exit_s is not None and not (math.isfinite(idle_exit_s) and idle_exit_s > 0):
        fail(f"--idle-exit-s must be a finite number of seconds > 0, got {idle_exit_s:g}", 2)
    directory = _dir(state_dir)
    args = [f"--state-dir={directory}"]
    if idle_exit_s is not None:
        args.append(f"--idle-exit-s={idle_exit_s}")
    console.print(f"local spot cloud for {directory} (Ctrl-C stops the daemon; jobs go on)")
    sys.exit(daemon_main(args))


@local.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(state_dir: Path | None, as_json: bool) -> None:
    """Whether a daemon runs for the state directory, and how many jobs it has."""
    client = LocalCloudClient(_dir(state_dir), start=False)
    try:
        doc = client.connect().call("GET", "/v1/status")
    except SpotWorkflowsError:
        doc = None
    if as_json:
        click.echo(json.dumps({"running": doc is not None, **(doc or {})}, indent=2))
    elif doc is None:
        out.print(f"no local spot cloud runs for {_dir(state_dir)}")
    else:
        out.print(
            f"local spot cloud pid {doc['pid']} for {doc['state_dir']}: {doc['live_jobs']} live "
            f"job(s), {doc['jobs']} in all; metadata endpoints at {doc['metadata_url']}"
        )
    sys.exit(0 if doc is not None else 1)


@local.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
def jobs(state_dir: Path | None, as_json: bool) -> None:
    """Every job: step key, attempt, capacity, state, outcome, exit code, notice served (read
    from the state directory when no daemon runs)."""
    directory = _dir(state_dir)
    try:
        rows = LocalCloudClient(directory, start=False).connect().call("GET", "/v1/jobs")
    except SpotWorkflowsError:
        from spot_workflows.backends.local import jobs as local_jobs

        console.print(f"no local spot cloud runs for {directory}: jobs as recorded on disk")
        found = sorted((directory / "jobs").iterdir()) if (directory / "jobs").is_dir() else []
        rows = [local_jobs.summary(d) for d in found if (d / local_jobs.JOB).exists()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"local jobs ({len(rows)})")
    for col in ("job", "step key", "attempt", "capacity", "state", "outcome", "exit", "notice"):
        table.add_column(
            col, no_wrap=col in ("job", "capacity", "state", "outcome"), overflow="fold"
        )
    for r in rows:
        table.add_row(
            r["job_id"],
            str(r["step_key"]),
            str(r["attempt"]),
            str(r["capacity"]),
            r["state"],
            r["outcome"] or "",
            "" if r["exit_code"] is None else str(r["exit_code"]),
            "served" if r["notice_served"] else ("reclaimed" if r["reclaimed"] else ""),
        )
    out.print(table)


@local.command()
@state_dir_option
def stop(state_dir: Path | None) -> None:
    """Stop every job of the daemon (recorded as cancelled), then the daemon."""
    client = LocalCloudClient(_dir(state_dir), start=False)
    try:
        doc = client.stop()
    except SpotWorkflowsError as exc:
        fail(str(exc), 1)
    if doc is None:
        out.print(f"no local spot cloud runs for {_dir(state_dir)}")
        return
    out.print(f"stopped the local spot cloud for {_dir(state_dir)} ({doc['stopped_jobs']} job(s))")
