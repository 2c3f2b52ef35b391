"""The clairvoyant optimum: the cheapest any policy could do on a pool, restarts included.

A lower bound for the pool simulator (:mod:`spot_workflows.sim.pool`), under exactly its rules: a
SPOT attempt in a placement runs only on ticks that placement has availability; every start (SPOT
anywhere, or ON_DEMAND) costs the restart overhead ``d``, billed, no progress; ON_DEMAND is always
available; each tick an attempt runs is billed whole; the work must be done by the deadline. It
knows the whole future of every placement and pays no race costs, so no policy that learns
availability as it goes can cost less on the same scenario. Unlike the zero-overhead bound
(:func:`spot_workflows.sim.grid.omniscient_cost`) it pays for every restart it makes, so it says
how much of a baseline's cost any online policy could still save.

Computed exactly by dynamic programming over ticks: the state is what the step runs on (nothing,
ON_DEMAND, or SPOT in one placement), how far into its restart it is, and the work done, counted
in units of the greatest common divisor of the tick and ``d`` (whole seconds). Needs numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from spot_workflows.config import SpotPolicy
from spot_workflows.errors import ConfigError
from spot_workflows.sim.pool import check_pool
from spot_workflows.sim.traces import Trace

_INF = math.inf


def restart_progress(gap_s: int, overhead_s: int) -> list[int]:
    """Progress (seconds) in each tick from a start until the restart overhead is spent:
    ``[gap - d]`` when it fits in one tick, ``[0, 0, ..., gap - rest]`` otherwise."""
    out, left = [], overhead_s
    while True:
        out.append(gap_s - left if left < gap_s else 0)
        left = left - gap_s if left > gap_s else 0
        if left == 0:
            return out


def clairvoyant_cost(
    traces: Sequence[Trace],
    start_tick: int,
    policy: SpotPolicy,
    *,
    work_s: float,
    restart_overhead_s: float,
) -> float:
    """Dollars the clairvoyant optimum spends on the scenario starting at ``start_tick``;
    ``math.inf`` when not even ON_DEMAND from the first tick finishes by the deadline.

    Prices are the policy's (every SPOT placement at ``spot_usd_per_hour``), as in the pool
    simulator's built-in placements."""
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - numpy is in the dev environment
        raise ConfigError("the clairvoyant bound needs numpy: pip install numpy") from exc
    check_pool(traces)
    if policy.deadline_s is None:
        raise ConfigError("the clairvoyant bound needs a policy with deadline_s set")
    gap = round(traces[0].gap_s)
    d = round(restart_overhead_s)
    if abs(gap - traces[0].gap_s) > 1e-6 or abs(d - restart_overhead_s) > 1e-6 or d < 0:
        raise ConfigError(
            "the clairvoyant bound needs whole seconds for the tick and the restart overhead, "
            f"got {traces[0].gap_s!r} and {restart_overhead_s!r}"
        )
    ticks = int(policy.deadline_s // gap)
    if start_tick < 0 or start_tick + ticks > traces[0].ticks:
        raise ConfigError(
            f"scenario at tick {start_tick} runs past the end of the pool's traces "
            f"({traces[0].ticks} ticks)"
        )
    unit = math.gcd(gap, d) if d else gap
    work = int(work_s // unit)  # rounding down keeps it a lower bound
    steps = [p // unit for p in restart_progress(gap, d)]
    full = gap // unit
    settled = len(steps)  # restart stage index of an attempt past its restart
    spot_tick = policy.spot_usd_per_hour * gap / 3600
    od_tick = policy.on_demand_usd_per_hour * gap / 3600
    modes = 2 + len(traces)  # 0: nothing runs, 1: ON_DEMAND, 2 + i: SPOT in placement i

    def advance(arr, p: int):
        """Work done goes up by ``p`` units (capped at the work)."""
        if p == 0:
            return arr.copy()
        out = np.full_like(arr, _INF)
        out[p:] = arr[:-p]
        out[work] = min(out[work], arr[work - p :].min())
        return out

    cost = np.full((modes, settled + 1, work + 1), _INF)
    cost[0, settled, 0] = 0.0
    for k in range(ticks):
        new = np.full_like(cost, _INF)
        per_mode = cost.min(axis=1)  # cheapest per (mode, work), whatever the restart stage
        anywhere = per_mode.min(axis=0)
        new[0, settled] = anywhere  # stop (or stay stopped)
        for m in range(1, modes):
            if m >= 2 and not traces[m - 2].available[start_tick + k]:
                continue  # no SPOT there this tick: an attempt there is reclaimed or waits
            price = od_tick if m == 1 else spot_tick
            elsewhere = np.delete(per_mode, m, axis=0).min(axis=0)
            stage = 1 if settled > 1 else settled
            new[m, stage] = np.minimum(new[m, stage], advance(elsewhere, steps[0]) + price)
            for j in range(1, settled + 1):
                progress = steps[j] if j < settled else full
                nxt = min(j + 1, settled)
                new[m, nxt] = np.minimum(new[m, nxt], advance(cost[m, j], progress) + price)
        done = new[:, :, work].min()
        new[:, :, work] = _INF
        new[0, settled, work] = done  # finished: nothing more is billed
        cost = new
    return float(cost[:, :, work].min())
