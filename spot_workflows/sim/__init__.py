"""Trace replay of the real planner: cost and deadline misses of escalation strategies.

``simulate`` runs one scenario through ``core.planner.decide`` (the code production runs);
``grid.run`` runs every scenario of a set of traces; ``traces.load_trace`` reads the
``shared/traces`` format; ``simulate_pool`` / ``run_pool`` replay one trace per placement through
``core.pools.decide_pool`` against the ``rr_up`` and ``up_or`` baselines. The
``spot-workflows simulate`` command wraps them.
"""

from spot_workflows.sim.engine import ScenarioResult, simulate
from spot_workflows.sim.grid import OMNISCIENT, Cell, policy_names, run
from spot_workflows.sim.pool import check_pool, pool_placements, simulate_pool
from spot_workflows.sim.pool_baselines import run_pool
from spot_workflows.sim.traces import Trace, load_trace, trace_from_data

__all__ = [
    "OMNISCIENT",
    "Cell",
    "ScenarioResult",
    "Trace",
    "check_pool",
    "load_trace",
    "policy_names",
    "pool_placements",
    "run",
    "run_pool",
    "simulate",
    "simulate_pool",
    "trace_from_data",
]
