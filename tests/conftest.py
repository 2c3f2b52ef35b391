"""Repository-wide pytest options.

``--long`` (or ``SPOT_RELIABILITY_LONG=1``): the reliability suite (``tests/reliability``) runs its
larger campaigns (more seeded fault-injection runs); the default size is CI-friendly.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long reliability campaigns (more seeded fault-injection runs)",
    )


@pytest.fixture(scope="session")
def long_mode(request: pytest.FixtureRequest) -> bool:
    """True under ``--long`` or ``SPOT_RELIABILITY_LONG=1``."""
    return bool(request.config.getoption("--long")) or os.environ.get(
        "SPOT_RELIABILITY_LONG", ""
    ) not in ("", "0")
