"""Kept for compatibility: AWS Batch and GCP Batch settings now live in
:mod:`spot_workflows.backends.settings` (shared with the Prefect blocks); an Airflow connection
is read into them by :func:`spot_workflows.airflow.connections.settings`."""

from spot_workflows.backends.notice_sources import AwsNoticeSource, GcpNoticeSource
from spot_workflows.backends.settings import AwsSettings, GcpSettings

__all__ = ["AwsNoticeSource", "AwsSettings", "GcpNoticeSource", "GcpSettings"]
