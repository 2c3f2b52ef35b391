"""The ``spot-workflows`` command."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spot_workflows import __version__
from spot_workflows.errors import SpotWorkflowsError

console = Console(stderr=True)


@click.group()
@click.version_option(__version__, prog_name="spot-workflows")
def main() -> None:
    """Spot GPUs that are safe to use from Airflow and Prefect."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep checkpoints and logs here.")
@click.option("--steps", default=400, show_default=True, help="Training steps.")
def demo(as_json: bool, workdir: Path | None, steps: int) -> None:
    """Train on local 'spot' capacity: reclaimed twice, resumed from checkpoint, escalated."""
    from spot_workflows.demo import DemoConfig, last_step_in_log, run_demo

    config = DemoConfig(workdir=workdir, steps=steps)
    if as_json:
        summary = _guard(lambda: run_demo(config))
        click.echo(json.dumps(summary, indent=2))
        sys.exit(0 if summary["checksums_match"] else 1)

    console.print(
        "[bold]spot-workflows demo[/]: a deterministic training step on the local backend's spot "
        f"market (reclaims at {config.reclaims} s after start, {config.notice_window_s:.0f} s "
        f"notice, preemption budget {config.preemption_budget})"
    )
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("training", total=config.steps)
    state: dict = {"backend": None, "capacity": "SPOT", "job": None}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            backend, job = state["backend"], state["job"]
            if backend is not None and job is not None:
                step = last_step_in_log(backend.log_path(job))
                if step is not None:
                    progress.update(
                        task, completed=step, description=f"training on {state['capacity']:9}"
                    )

    def on_event(ev) -> None:
        colour = {"preempted": "red", "escalated": "yellow", "succeeded": "green"}.get(ev.kind, "")
        label = f"{ev.kind:>12}"
        progress.console.print(
            f"  [{colour}]{label}[/]  {ev.message}" if colour else f"  {label}  {ev.message}"
        )
        if ev.kind == "submitted" and ev.attempt is not None:
            state["job"], state["capacity"] = ev.attempt.job_id, ev.attempt.capacity.value

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with progress:
        summary = _guard(
            lambda: run_demo(
                config, on_event=on_event, backend_cb=lambda b: state.__setitem__("backend", b)
            )
        )
        stop.set()
        watcher.join()
        progress.update(task, completed=config.steps)
    _print_attempts(summary)
    ok = summary["checksums_match"]
    console.print(
        f"final weights sha256 {summary['final_checksum']}\n"
        f"uninterrupted run    {summary['reference_checksum']}\n"
        + ("[bold green]bit-identical[/]" if ok else "[bold red]MISMATCH[/]")
        + f"  ({summary['preemptions']} preemptions, {summary['steps_lost_total']} steps lost, "
        f"escalated={summary['escalated']}, {summary['wall_seconds']} s)\n"
        f"checkpoints and logs: {summary['workdir']}"
    )
    sys.exit(0 if ok else 1)


def _print_attempts(summary: dict) -> None:
    table = Table(title=f"attempts of {summary['step_key']}")
    for col in ("attempt", "capacity", "outcome", "resumed from", "reached", "steps lost", "s"):
        table.add_column(col, justify="right" if col not in ("capacity", "outcome") else "left")
    for r in summary["attempts"]:
        table.add_row(
            str(r["attempt"]),
            r["capacity"],
            r["outcome"] or "",
            str(r["resumed_from_step"]),
            "" if r["reached_step"] is None else str(r["reached_step"]),
            "" if r["steps_lost"] is None else str(r["steps_lost"]),
            f"{r['seconds']:.1f}",
        )
    Console().print(table)


@main.command("ledger")
@click.argument("checkpoint_uri")
@click.option("--key", required=True, help="Step key the ledger belongs to.")
@click.option("--json", "as_json", is_flag=True)
def ledger_cmd(checkpoint_uri: str, key: str, as_json: bool) -> None:
    """Show the attempt ledger stored next to a step's checkpoints."""
    from spot_workflows.ledger import Ledger
    from spot_workflows.runtime.store import CheckpointStore

    ledger = _guard(lambda: Ledger.open(CheckpointStore(checkpoint_uri), key))
    rows = [a.model_dump(mode="json") for a in ledger.attempts]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"ledger of {key}")
    for col in ("#", "capacity", "job", "state", "outcome", "reason"):
        table.add_column(col)
    for a in ledger.attempts:
        table.add_row(
            str(a.number),
            a.capacity.value,
            a.job_id or a.job_name,
            a.state.value,
            a.outcome.value if a.outcome else "",
            (a.reason or "")[:60],
        )
    Console().print(table)


def _guard(fn):
    try:
        return fn()
    except SpotWorkflowsError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
