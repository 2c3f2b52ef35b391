"""Checkpoint interval from the measured save cost and the observed mean time between reclaims.

Pure arithmetic (no clock, no I/O):

* Young (1974): ``tau = sqrt(2 * delta * M)``;
* Daly (2006), higher order: ``tau = sqrt(2 delta M) * (1 + sqrt(delta / 2M) / 3 + (delta / 2M) / 9)
  - delta`` for ``delta < 2M``, else ``tau = M``;

with ``delta`` the time one save stalls the step (``Checkpointer.last_save_seconds``) and ``M``
the mean time between reclaims (observed on the ledger: spot running time / spot reclaims).
:func:`expected_wall_time` is Daly's expected completion time under exponential reclaims, used to
check an interval against the optimum.

A Checkpointer with adaptive cadence calls, after each save::

    ckpt.set_interval(adaptive_interval(ckpt.last_save_seconds, mtbf_s))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from spot_workflows.core.outcomes import Attempt, Capacity, Outcome
from spot_workflows.errors import ConfigError

DEFAULT_MTBF_S = 6 * 3600.0
"""Mean time between reclaims assumed before any reclaim was observed (6 hours)."""


def _check(save_s: float, mtbf_s: float) -> None:
    if not save_s > 0 or not mtbf_s > 0:
        raise ConfigError(
            f"save cost and MTBF must be > 0 seconds, got save {save_s!r} and MTBF {mtbf_s!r}"
        )


def young_interval(save_s: float, mtbf_s: float) -> float:
    """Young's first-order optimum ``sqrt(2 * save * MTBF)`` (seconds of work between saves)."""
    _check(save_s, mtbf_s)
    return math.sqrt(2 * save_s * mtbf_s)


def daly_interval(save_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum (seconds of work between saves)."""
    _check(save_s, mtbf_s)
    if save_s >= 2 * mtbf_s:
        return mtbf_s
    x = save_s / (2 * mtbf_s)
    return math.sqrt(2 * save_s * mtbf_s) * (1 + math.sqrt(x) / 3 + x / 9) - save_s


def expected_wall_time(
    work_s: float, interval_s: float, save_s: float, mtbf_s: float, restart_s: float = 0.0
) -> float:
    """Daly's expected wall time to finish ``work_s`` with a save every ``interval_s`` of work,
    reclaims arriving as a Poisson process of mean ``mtbf_s``, each costing ``restart_s``."""
    _check(save_s, mtbf_s)
    if not interval_s > 0:
        raise ConfigError(f"interval must be > 0 seconds, got {interval_s!r}")
    segments = work_s / interval_s
    return (
        mtbf_s
        * math.exp(restart_s / mtbf_s)
        * math.expm1((interval_s + save_s) / mtbf_s)
        * segments
    )


def observed_mtbf(attempts: Sequence[Attempt], now: float) -> float | None:
    """Mean time between reclaims seen on the ledger: spot running seconds / spot reclaims.

    None until a reclaim was observed (use a prior such as :data:`DEFAULT_MTBF_S`)."""
    ran, reclaims = 0.0, 0
    for a in attempts:
        if a.capacity is not Capacity.SPOT or a.started_at is None:
            continue
        end = a.ended_at if a.ended_at is not None else now
        ran += max(0.0, end - a.started_at)
        reclaims += a.outcome is Outcome.PREEMPTED
    return ran / reclaims if reclaims else None


def adaptive_interval(
    save_s: float | None,
    mtbf_s: float | None,
    *,
    default_s: float = 600.0,
    floor_s: float = 30.0,
    ceiling_s: float = 6 * 3600.0,
) -> float:
    """The interval a Checkpointer should use now: Daly's, clamped to ``[floor_s, ceiling_s]``.

    Before the first save (``save_s`` None) it is ``default_s``; without an observed reclaim the
    MTBF prior :data:`DEFAULT_MTBF_S` is used."""
    if save_s is None or save_s <= 0:
        return default_s
    tau = daly_interval(save_s, mtbf_s if mtbf_s else DEFAULT_MTBF_S)
    return min(ceiling_s, max(floor_s, tau))
