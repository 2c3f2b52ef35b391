"""spot-workflows: spot GPUs that are safe to use from Airflow and Prefect."""

from importlib.metadata import PackageNotFoundError, version

from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import (
    RESERVED_EXIT_CODE,
    Action,
    Attempt,
    Capacity,
    Decision,
    Outcome,
    TerminationNotice,
)
from spot_workflows.errors import SpotWorkflowsError, StepFailedError

try:
    __version__ = version("spot-workflows")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "RESERVED_EXIT_CODE",
    "Action",
    "Attempt",
    "Capacity",
    "Decision",
    "Outcome",
    "SpotPolicy",
    "SpotWorkflowsError",
    "StepFailedError",
    "StepSpec",
    "TerminationNotice",
    "__version__",
]
