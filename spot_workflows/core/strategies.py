"""Every built-in escalation strategy, registered; look strategies up here.

:mod:`~spot_workflows.core.escalation` holds the registry and the ``attempts`` strategy;
:mod:`~spot_workflows.core.policies` adds the deadline-aware ones. Importing both here (and not
one from the other) keeps the two modules free of an import cycle.
"""

from __future__ import annotations

from spot_workflows.core import policies as _policies  # noqa: F401  (registers its strategies)
from spot_workflows.core.escalation import (
    AUTO,
    DEFAULT_WITHOUT_DEADLINE,
    Choice,
    History,
    Strategy,
    get_strategy,
    is_live,
    register,
    resolve,
    strategy_names,
)

__all__ = [
    "AUTO",
    "DEFAULT_WITHOUT_DEADLINE",
    "Choice",
    "History",
    "Strategy",
    "get_strategy",
    "is_live",
    "register",
    "resolve",
    "strategy_names",
]
