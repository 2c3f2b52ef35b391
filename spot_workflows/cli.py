"""The ``spot-workflows`` command."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spot_workflows import __version__
from spot_workflows.cli_errors import (
    OneLineErrors,
    check_output_file,
    check_workdir,
    console,
    fail,
    guard,
    stdout_console,
)


@click.group(cls=OneLineErrors)
@click.version_option(__version__, prog_name="spot-workflows")
def main() -> None:
    """Spot GPUs that are safe to use from Airflow and Prefect."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep checkpoints and logs here.")
@click.option(
    "--steps",
    default=400,
    show_default=True,
    type=click.IntRange(min=1, max=1_000_000),
    help="Training steps (1 to 1000000).",
)
def demo(as_json: bool, workdir: Path | None, steps: int) -> None:
    """Train on local 'spot' capacity: reclaimed twice, resumed from checkpoint, escalated."""
    from spot_workflows.demo import DemoConfig, last_step_in_log, run_demo

    if workdir is not None:
        workdir = check_workdir(workdir)
    config = DemoConfig(workdir=workdir, steps=steps)
    _interrupt_on_sigterm()
    if as_json:
        summary = guard(lambda: run_demo(config))
        click.echo(json.dumps(summary, indent=2))
        sys.exit(0 if summary["checksums_match"] else 1)

    console.print(
        "[bold]spot-workflows demo[/]: a deterministic training step on the local backend's spot "
        "market: spot attempts reclaimed at steps "
        f"{', '.join(map(str, config.reclaim_at_steps))}, {config.notice_window_s:.0f} s notice, "
        f"preemption budget {config.preemption_budget}"
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
        summary = guard(
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
        f"checkpoints and logs: {summary['workdir']}\n"
        f"cost (simulated V100 prices): ${summary['cost']['total_usd']:.4f} vs "
        f"${summary['cost']['on_demand_equivalent_usd']:.4f} on-demand, savings "
        f"{summary['cost']['savings_pct']}%  "
        f"(spot-workflows report {summary['checkpoint_uri']} --html report.html)"
    )
    sys.exit(0 if ok else 1)


def _interrupt_on_sigterm() -> None:
    """SIGTERM stops a blocking run the way Ctrl-C does (the live attempt is stopped, recorded
    as stopped, and the command exits 130)."""

    def handler(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _print_attempts(summary: dict) -> None:
    table = Table(title=f"attempts of {summary['step_key']}")
    for col in ("attempt", "capacity", "outcome", "resumed from", "reached", "steps lost", "s"):
        table.add_column(
            col,
            justify="right" if col not in ("capacity", "outcome") else "left",
            overflow="fold",
        )
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
    stdout_console().print(table)


@main.command()
@click.argument("checkpoint_uris", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write an HTML report.")
@click.option("--prices", type=click.Path(exists=True, path_type=Path), help="Price override file.")
@click.option(
    "--aws-spot-prices",
    "aws_region",
    metavar="REGION",
    help="Price AWS spot attempts at the region's current spot price (describe_spot_price_history).",
)
def report(
    checkpoint_uris: tuple[str, ...],
    as_json: bool,
    html_path: Path | None,
    prices,
    aws_region: str | None,
) -> None:
    """Cost, savings and interruptions of steps, from their ledgers.

    Each CHECKPOINT_URI is a step's checkpoint URI, or a prefix holding several steps.
    """
    from spot_workflows.pricing import load_catalog
    from spot_workflows.report import run_report
    from spot_workflows.report_html import render_html

    if html_path is not None:
        check_output_file(html_path, "--html")
    catalog = guard(lambda: load_catalog(prices))
    if aws_region:
        from spot_workflows.backends.aws_pricing import spot_price_override

        known = sorted({p.instance_type for p in catalog.entries if p.provider == "aws"})
        catalog = catalog.merged(
            guard(
                lambda: spot_price_override(base=catalog, region=aws_region, instance_types=known)
            )
        )
    rep = guard(lambda: run_report(checkpoint_uris, catalog))
    for skipped in rep.skipped:
        click.echo(f"skipped {skipped}", err=True)
    if html_path is not None:
        try:
            html_path.write_text(render_html(rep))
        except OSError as exc:
            fail(f"--html {html_path}: cannot write it: {exc.strerror or exc}", 1)
        click.echo(f"wrote {html_path}", err=True)
    if as_json:
        click.echo(rep.model_dump_json(indent=2))
        return
    _print_report(rep)


def _print_report(rep) -> None:
    out = stdout_console()
    table = Table(title=f"cost report (prices: catalog {rep.catalog_snapshot})")
    for col in (
        "step",
        "attempts",
        "reclaims",
        "spent",
        "on-demand equiv.",
        "savings",
        "GPU-h",
        "GPU-h lost",
        "wait s",
    ):
        table.add_column(col, justify="left" if col == "step" else "right", overflow="fold")
    for s in rep.steps:
        c = s.cost
        table.add_row(
            s.step_key,
            str(len(c.attempts)),
            str(c.reclaims),
            f"${c.total_usd:,.4f}",
            f"${c.on_demand_equivalent_usd:,.4f}",
            "n/a" if c.savings_pct is None else f"{c.savings_pct:.1f}%",
            f"{c.gpu_hours:,.4f}",
            f"{c.gpu_hours_lost:,.4f}",
            f"{c.capacity_wait_hours * 3600:,.0f}",
        )
    out.print(table)
    savings = "n/a" if rep.savings_pct is None else f"{rep.savings_pct:.1f}%"
    out.print(
        f"total ${rep.total_usd:,.4f} vs ${rep.on_demand_equivalent_usd:,.4f} on-demand "
        f"(savings {savings}); reclaims by zone {rep.reclaims_by_zone or '{}'}; "
        f"by instance type {rep.reclaims_by_instance_type or '{}'}"
    )
    for u in rep.unpriced:
        out.print(f"[yellow]unpriced (not counted):[/] {u}")


class _LedgerGroup(click.Group):
    """``ledger URI --key K`` shows the ledger; ``ledger reopen URI --key K`` reopens it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@main.group("ledger", cls=_LedgerGroup)
def ledger_group() -> None:
    """The attempt ledger stored next to a step's checkpoints: show it, or reopen a step."""


@ledger_group.command("show")
@click.argument("checkpoint_uri")
@click.option("--key", required=True, help="Step key the ledger belongs to.")
@click.option("--json", "as_json", is_flag=True)
def ledger_show(checkpoint_uri: str, key: str, as_json: bool) -> None:
    """Show the attempt ledger stored next to a step's checkpoints."""
    from spot_workflows.ledger import LEDGER_PATH, Ledger
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    store = guard(lambda: CheckpointStore(checkpoint_uri))
    if guard(lambda: store.read(LEDGER_PATH)) is None:
        fail(f"no ledger at {store.uri}/{LEDGER_PATH}: pass the step's checkpoint URI", 1)
    ledger = guard(lambda: Ledger.open(store, key))
    rows = [a.model_dump(mode="json") for a in ledger.attempts]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"ledger of {key}")
    placed = any(a.placement for a in ledger.attempts)
    for col in ("#", "capacity", *(("placement",) if placed else ()), "job", "state", "outcome"):
        table.add_column(col, overflow="fold")
    table.add_column("reason", overflow="fold")
    for a in ledger.attempts:
        table.add_row(
            str(a.number),
            a.capacity.value,
            *((a.placement or "",) if placed else ()),
            a.job_id or a.job_name,
            a.state.value,
            a.outcome.value if a.outcome else "",
            (a.reason or "")[:60],
        )
    stdout_console().print(table)


@ledger_group.command("reopen")
@click.argument("checkpoint_uri")
@click.option("--key", required=True, help="Step key the ledger belongs to.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def ledger_reopen(checkpoint_uri: str, key: str, yes: bool) -> None:
    """Let a step whose last attempt was cancelled from outside (console, CLI) run again: the
    next run resumes from its last checkpoint."""
    import time

    from spot_workflows.ledger import Ledger
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    ledger = guard(lambda: Ledger.open(CheckpointStore(checkpoint_uri), key))
    last = ledger.attempts[-1] if ledger.attempts else None
    if last is None or last.outcome is None or last.outcome.value != "CANCELLED":
        state = "has no attempts" if last is None else f"ends with attempt {last.number} "
        if last is not None:
            state += last.outcome.value if last.outcome else last.state.value
        fail(f"nothing to reopen: step {key!r} {state}")
    if not yes:
        click.confirm(
            f"attempt {last.number} of {key!r} was cancelled outside spot-workflows "
            f"({last.reason}); let the step run again from its last checkpoint?",
            abort=True,
        )
    attempt = guard(
        lambda: ledger.reopen(now=time.time(), reason="reopened by spot-workflows ledger reopen")
    )
    click.echo(
        f"reopened {key!r}: attempt {attempt.number} is now recorded as stopped; the next run "
        "of the step resumes from its last checkpoint"
    )


from spot_workflows.cli_sim import simulate  # noqa: E402

main.add_command(simulate)


def _register_subcommands() -> None:
    from spot_workflows.cli_aws import aws
    from spot_workflows.cli_local import local

    main.add_command(aws)
    main.add_command(local)


_register_subcommands()

if __name__ == "__main__":
    main()
