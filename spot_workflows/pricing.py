"""Load the price catalog: the packaged dated snapshot, plus an optional user override file.

Override: ``--prices FILE`` on the CLI, or the ``SPOT_WORKFLOWS_PRICES`` environment variable: a
JSON file in the same shape as ``spot_workflows/data/prices.json`` whose entries replace matching
(provider, instance type, region) entries. AWS spot prices can be refreshed from
``describe_spot_price_history`` when credentials allow (``spot-workflows report
--aws-spot-prices REGION``, :mod:`spot_workflows.backends.aws_pricing`); otherwise the
snapshot's typical spot prices are used.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from spot_workflows.core.cost import PriceCatalog
from spot_workflows.errors import ConfigError, describe_invalid

ENV_OVERRIDE = "SPOT_WORKFLOWS_PRICES"


def packaged_catalog() -> PriceCatalog:
    text = resources.files("spot_workflows.data").joinpath("prices.json").read_text()
    return PriceCatalog.model_validate_json(text)


def load_catalog_file(path: str | Path) -> PriceCatalog:
    try:
        doc = json.loads(Path(path).read_text())
        return PriceCatalog.model_validate(doc)
    except OSError as exc:
        raise ConfigError(f"price file {path} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:  # JSON or pydantic
        detail = describe_invalid(exc, "catalog") if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(
            f"price file {path} is not a price catalog ({detail}); expected "
            '{"snapshot": "YYYY-MM-DD", "entries": [{"provider": "aws", "instance_type": '
            '"g5.xlarge", "on_demand": 1.006, "spot": 0.40}]}'
        ) from exc


def load_catalog(override: str | Path | None = None) -> PriceCatalog:
    """The snapshot, with the override file (argument, else ``$SPOT_WORKFLOWS_PRICES``) on top."""
    catalog = packaged_catalog()
    path = override or os.environ.get(ENV_OVERRIDE)
    return catalog.merged(load_catalog_file(path)) if path else catalog
