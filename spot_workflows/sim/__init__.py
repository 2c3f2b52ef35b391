"""Trace replay of the real planner: cost and deadline misses of escalation strategies.

``simulate`` runs one scenario through ``core.planner.decide`` (the code production runs);
``grid.run`` runs every scenario of a set of traces; ``traces.load_trace`` reads the
``shared/traces`` format. The ``spot-workflows simulate`` command wraps them.
"""

from spot_workflows.sim.engine import ScenarioResult, simulate
from spot_workflows.sim.grid import OMNISCIENT, Cell, policy_names, run
from spot_workflows.sim.traces import Trace, load_trace, trace_from_data

__all__ = [
    "OMNISCIENT",
    "Cell",
    "ScenarioResult",
    "Trace",
    "load_trace",
    "policy_names",
    "run",
    "simulate",
    "trace_from_data",
]
