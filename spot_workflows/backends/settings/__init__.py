"""Backend settings: one pydantic model per backend, read by both engines.

An Airflow connection's extras and a Prefect backend block are two views of the same model, with
the same setting names: :class:`LocalSettings`, :class:`AwsSettings`, :class:`GcpSettings`. Each
builds its backend (``build_backend()``), the clients and credentials that backend needs, and the
termination notice source of the backend (``notice_source(since=...)``). Old setting names of
either engine still work: they are mapped to the current name with a ``DeprecationWarning``.
Invalid values raise a one-line :class:`~spot_workflows.errors.ConfigError` naming the setting
(:meth:`BackendSettings.load`).
"""

from spot_workflows.backends.settings.aws import AwsSettings
from spot_workflows.backends.settings.common import BackendSettings, rename_deprecated
from spot_workflows.backends.settings.gcp import GcpSettings
from spot_workflows.backends.settings.local import EVENTS_FILE, LocalSettings

__all__ = [
    "EVENTS_FILE",
    "AwsSettings",
    "BackendSettings",
    "GcpSettings",
    "LocalSettings",
    "rename_deprecated",
]
