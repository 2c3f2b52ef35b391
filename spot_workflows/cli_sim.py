"""``spot-workflows simulate``: replay spot availability traces through the real planner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from spot_workflows.cli_errors import fail as _fail
from spot_workflows.errors import SpotWorkflowsError

_POLICY_HELP = "Escalation policy to simulate ('list' names them)."


@click.command("simulate")
@click.option(
    "--trace",
    "traces",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trace file, or the name of a shipped trace (e.g. aws-10-26-2022/us-west-2a_v100_1); "
    "repeat for several.",
)
@click.option("--work-hours", type=float, help="W: hours of work on one machine.")
@click.option("--deadline-hours", type=float, help="D: hours from start to the deadline.")
@click.option(
    "--restart-hours", "--overhead-hours", "restart_hours", type=float,
    help="d: restart overhead in hours.",
)  # fmt: skip
@click.option(
    "--starts",
    type=click.IntRange(min=1, max=100_000),
    default=60,
    show_default=True,
    help="S: scenarios per trace (1 to 100000).",
)
@click.option("--policy", default="auto", show_default=True, help=_POLICY_HELP)
@click.option(
    "--pool",
    "pool",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="One trace per spot placement, aligned in time (repeat; 2 or more run the pool "
    "simulator against the rr_up and up_or baselines).",
)
@click.option(
    "--race-cost-s",
    type=float,
    default=300.0,
    show_default=True,
    help="Pool simulator: seconds of spot time a started attempt that loses a race costs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")
def simulate(
    traces: tuple[Path, ...],
    work_hours: float | None,
    deadline_hours: float | None,
    restart_hours: float | None,
    starts: int,
    policy: str,
    pool: tuple[Path, ...],
    race_cost_s: float,
    as_json: bool,
) -> None:
    """Cost (fraction of all-on-demand) and deadline misses of a policy on spot traces.

    For each trace of T ticks, with n = ceil(D*3600/gap)+2 ticks needed, S scenarios start at
    ticks floor(k*(T-n)/S), k = 0..S-1. Each runs the planner production uses, tick by tick.
    """
    from spot_workflows.sim import Cell, load_trace, policy_names, run

    if policy == "list":
        names = policy_names()
        click.echo(json.dumps(names) if as_json else "\n".join(names))
        return
    if pool:
        _simulate_pool(
            pool, traces, work_hours, deadline_hours, restart_hours, starts, race_cost_s, as_json
        )
        return
    missing = [
        flag
        for flag, value in (
            ("--trace", traces),
            ("--work-hours", work_hours),
            ("--deadline-hours", deadline_hours),
            ("--restart-hours", restart_hours),
        )
        if not value and value != 0
    ]
    if missing:
        _fail(f"missing {', '.join(missing)} (or use --policy list)")
    assert work_hours is not None and deadline_hours is not None and restart_hours is not None
    for flag, value, low in (
        ("--work-hours", work_hours, "> 0"),
        ("--deadline-hours", deadline_hours, "> 0"),
        ("--restart-hours", restart_hours, ">= 0"),
    ):
        if not math.isfinite(value) or value < 0 or (value == 0 and low == "> 0"):
            _fail(f"{flag} must be a finite number of hours {low}, got {value:g}")
    if deadline_hours < work_hours + restart_hours:
        _fail(
            f"infeasible deadline: --deadline-hours {deadline_hours:g} is shorter than "
            f"--work-hours {work_hours:g} + --restart-hours {restart_hours:g} (one start on "
            "on-demand); every scenario would miss it. Need D >= W + d"
        )
    try:
        loaded = [load_trace(p) for p in traces]
        result = run(
            loaded,
            Cell(work_hours, deadline_hours, restart_hours, starts),
            policy,
        )
    except SpotWorkflowsError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"{result['policy']}: W={work_hours:g} h, D={deadline_hours:g} h, d={restart_hours:g} h, "
        f"{result['scenarios']} scenarios"
    )
    for t in result["traces"]:
        click.echo(
            f"  {t['trace']:<28} cost {t['mean_cost_fraction']:.4f} of on-demand, "
            f"{t['deadline_misses']} missed"
        )
    click.echo(
        f"  {'all':<28} cost {result['mean_cost_fraction']:.4f} of on-demand, "
        f"{result['deadline_misses']} missed"
    )


def _check_cell(work_hours: float, deadline_hours: float, restart_hours: float) -> None:
    for flag, value, low in (
        ("--work-hours", work_hours, "> 0"),
        ("--deadline-hours", deadline_hours, "> 0"),
        ("--restart-hours", restart_hours, ">= 0"),
    ):
        if not math.isfinite(value) or value < 0 or (value == 0 and low == "> 0"):
            _fail(f"{flag} must be a finite number of hours {low}, got {value:g}")
    if deadline_hours < work_hours + restart_hours:
        _fail(
            f"infeasible deadline: --deadline-hours {deadline_hours:g} is shorter than "
            f"--work-hours {work_hours:g} + --restart-hours {restart_hours:g} (one start on "
            "on-demand); every scenario would miss it. Need D >= W + d"
        )


def _simulate_pool(
    pool: tuple[Path, ...],
    traces: tuple[Path, ...],
    work_hours: float | None,
    deadline_hours: float | None,
    restart_hours: float | None,
    starts: int,
    race_cost_s: float,
    as_json: bool,
) -> None:
    """``--pool``: our pool policy against rr_up and up_or on the same scenarios."""
    from spot_workflows.sim import Cell, load_trace
    from spot_workflows.sim.pool_baselines import RR_UP, UP_OR, run_pool

    if traces:
        _fail("give either --trace (one placement) or --pool (2 or more placements), not both")
    if len(pool) < 2:
        _fail(
            f"--pool needs at least 2 traces (one per spot placement), got {len(pool)}; "
            "use --trace for one placement"
        )
    missing = [
        flag
        for flag, value in (
            ("--work-hours", work_hours),
            ("--deadline-hours", deadline_hours),
            ("--restart-hours", restart_hours),
        )
        if value is None
    ]
    if missing:
        _fail(f"missing {', '.join(missing)}")
    assert work_hours is not None and deadline_hours is not None and restart_hours is not None
    _check_cell(work_hours, deadline_hours, restart_hours)
    if not (math.isfinite(race_cost_s) and race_cost_s >= 0):
        _fail(f"--race-cost-s must be a finite number of seconds >= 0, got {race_cost_s:g}")
    try:
        loaded = [load_trace(p) for p in pool]
        result = run_pool(
            loaded, Cell(work_hours, deadline_hours, restart_hours, starts), race_cost_s=race_cost_s
        )
    except SpotWorkflowsError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"pool of {len(loaded)}: W={work_hours:g} h, D={deadline_hours:g} h, "
        f"d={restart_hours:g} h, race cost {race_cost_s:g} s, {result['scenarios']} scenarios"
    )
    rows = [("ours", result), (RR_UP, result[RR_UP]), (UP_OR, result[UP_OR])]
    for name, r in rows:
        click.echo(
            f"  {name:<8} cost {r['mean_cost_fraction']:.4f} of on-demand, "
            f"{r['deadline_misses']} missed"
        )
