"""Airflow 3 provider for spot-workflows: hook, deferrable spot step operator, triggers, sensor.

Registered through the ``apache_airflow_provider`` entry point, so ``airflow providers list``
shows ``spot-workflows``. Importing this package does not import Airflow; the submodules do.
"""

from __future__ import annotations

from typing import Any

PACKAGE = "spot-workflows"
CONN_TYPE_LOCAL = "spot-local"
"""Hyphenated: Airflow warns on every fetch of a connection whose type has '_' (RFC 3986)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's provider manager (``airflow/provider_info.schema.json``)."""
    integration = "Spot workflows"
    return {
        "package-name": PACKAGE,
        "name": "Spot workflows",
        "description": (
            "Run pipeline steps on spot GPUs through AWS Batch, GCP Batch or a local backend: "
            "checkpoint-aware retries, on-demand escalation, termination sensors."
        ),
        "versions": [_version()],
        "integrations": [
            {
                "integration-name": integration,
                "external-doc-url": "https://github.com/spot-workflows/spot-workflows",
                "tags": ["service"],
            }
        ],
        "operators": [
            {
                "integration-name": integration,
                "python-modules": ["spot_workflows.airflow.operators"],
            }
        ],
        "sensors": [
            {"integration-name": integration, "python-modules": ["spot_workflows.airflow.sensors"]}
        ],
        "triggers": [
            {
                "integration-name": integration,
                "python-modules": ["spot_workflows.airflow.triggers"],
            }
        ],
        "hooks": [
            {"integration-name": integration, "python-modules": ["spot_workflows.airflow.hooks"]}
        ],
        "connection-types": [
            {
                "hook-class-name": "spot_workflows.airflow.hooks.SpotBackendHook",
                "hook-name": "Spot workflows (local backend)",
                "connection-type": CONN_TYPE_LOCAL,
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "password", "port"],
                    "relabeling": {},
                    "placeholders": {
                        "extra": '{"state_dir": "/tmp/spot-local", "reclaim_after_s": [30, 30]}'
                    },
                },
            }
        ],
        "extra-links": ["spot_workflows.airflow.links.SpotJobConsoleLink"],
    }
