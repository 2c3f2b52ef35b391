"""Prefect 3 integration: spot tasks, configuration blocks, termination sensing, events and
artifacts.

This package imports Prefect; nothing else in spot_workflows imports it. It is also the
``prefect.collections`` entry point, so importing it registers the blocks with Prefect.

```python
from prefect import flow
from spot_workflows.prefect import LocalBackendBlock, SpotPolicyBlock, spot_task

@spot_task(backend=LocalBackendBlock(), policy=SpotPolicyBlock(preemption_budget=2), retries=1)
def finetune(steps: int) -> list[str]:
    return ["python", "train.py", f"--steps={steps}"]

@flow
def pipeline():
    result = finetune(steps=400)  # a SpotStepResult
```
"""

from spot_workflows.prefect.artifacts import artifact_key, ledger_markdown, publish_step_artifact
from spot_workflows.prefect.blocks import (
    LocalBackendBlock,
    SpotBackendBlock,
    SpotPolicyBlock,
)
from spot_workflows.prefect.cloud_blocks import AwsBatchBackendBlock, GcpBatchBackendBlock
from spot_workflows.prefect.events import (
    AUTOMATION_EVENTS,
    EVENT_PREFIX,
    StepEventEmitter,
    event_name,
)
from spot_workflows.prefect.options import StepOptions
from spot_workflows.prefect.tasks import (
    SpotStepResult,
    SpotTask,
    derive_step_key,
    execute_step,
    run_spot_step,
    spot_step,
    spot_task,
)
from spot_workflows.prefect.termination import TERMINATION_EVENT, wait_for_termination

__all__ = [
    "AUTOMATION_EVENTS",
    "EVENT_PREFIX",
    "AwsBatchBackendBlock",
    "GcpBatchBackendBlock",
    "LocalBackendBlock",
    "SpotBackendBlock",
    "SpotPolicyBlock",
    "SpotStepResult",
    "SpotTask",
    "StepEventEmitter",
    "StepOptions",
    "TERMINATION_EVENT",
    "artifact_key",
    "derive_step_key",
    "event_name",
    "execute_step",
    "ledger_markdown",
    "publish_step_artifact",
    "run_spot_step",
    "spot_step",
    "spot_task",
    "wait_for_termination",
]
