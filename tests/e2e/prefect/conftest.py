"""Prefect e2e tests: one ``prefect_test_harness()`` per pytest session.

The Prefect settings are read when prefect is first imported, so the environment is set here,
before anything below imports it: a throwaway PREFECT_HOME (with the memo store inside it) and no
analytics. The harness fixture is autouse for this directory only; the variables are restored
when the session ends, so other test directories are unaffected.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="spot-prefect-home-")
_ENV = {
    "PREFECT_HOME": _HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_MEMO_STORE_PATH": str(Path(_HOME) / "memo_store.toml"),
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
_SAVED = {name: os.environ.get(name) for name in _ENV}
if "prefect" in sys.modules:  # pragma: no cover - a sign another conftest imported it first
    warnings.warn(
        "prefect was imported before tests/e2e/prefect/conftest.py set PREFECT_HOME; the tests "
        "may use your real Prefect profile",
        stacklevel=1,
    )
os.environ.update(_ENV)

import pytest  # noqa: E402
from prefect.client.orchestration import SyncPrefectClient, get_client  # noqa: E402
from prefect.events.filters import EventFilter, EventOrder, EventResourceFilter  # noqa: E402
from prefect.events.worker import EventsWorker  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=90):
        yield
    shutil.rmtree(_HOME, ignore_errors=True)
    for name, value in _SAVED.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def client(prefect_server: None) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


@pytest.fixture
def wait_for_events(client: SyncPrefectClient) -> Callable[..., list]:
    """Events about one resource, read back from the test server once ``done(events)`` holds."""

    def wait(*, resource_id: str, done: Callable[[list], bool], timeout: float = 20.0) -> list:
        EventsWorker.drain_all()  # flush what this process has queued to the server
        deadline = time.monotonic() + timeout
        while True:
            page = client.read_events(
                filter=EventFilter(
                    resource=EventResourceFilter(id=[resource_id]), order=EventOrder.ASC
                ),
                limit=50,
            )
            if done(page.events) or time.monotonic() > deadline:
                return page.events
            time.sleep(0.25)

    return wait
