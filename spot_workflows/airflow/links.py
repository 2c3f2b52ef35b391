"""Extra link from a spot step task to its job's page in the AWS Batch or GCP Batch console."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class SpotJobConsoleLink(BaseOperatorLink):
    """The console page of the step's latest attempt (none for the local backend).

    The operator pushes the URL to XCom under :attr:`xcom_key` as soon as an attempt is
    submitted, so the link works while the task is deferred; the web UI reads it from there.
    """

    name = "Spot job console"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return getattr(operator, "console_url", None) or ""
