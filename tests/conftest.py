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


# -- the local spot cloud ------------------------------------------------------------------------
# Every test process (and every process it starts) uses a throwaway default state directory, so no
# test touches ~/.spot-workflows/local. Daemons outlive their clients by design, so the session
# ends by stopping every daemon (and its jobs) whose state directory is under the temp dir.
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault(
    "SPOT_WORKFLOWS_LOCAL_DIR", tempfile.mkdtemp(prefix="spot-local-cloud-default-")
)


def _local_cloud_dirs() -> list[Path]:
    out = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    tmp = Path(tempfile.gettempdir()).resolve()
    dirs = []
    for line in out.splitlines():
        found = re.search(r"spot_workflows\.backends\.local\.daemon .*--state-dir=(\S+)", line)
        if found is None:
            continue
        state_dir = Path(found.group(1))
        if tmp in state_dir.parents:
            dirs.append(state_dir)
    return dirs


@pytest.fixture(scope="session", autouse=True)
def _stop_local_clouds():
    yield
    from spot_workflows.backends.local import LocalCloudClient

    for state_dir in _local_cloud_dirs():
        try:
            LocalCloudClient(state_dir, start=False).stop(reason="test session over")
        except Exception as exc:  # best effort: report, go on with the others
            print(f"could not stop the local cloud of {state_dir}: {exc}")


@pytest.fixture(autouse=True)
def _stop_this_tests_local_clouds(request):
    """Stop the daemons a test started under its own tmp_path when it ends (fewer idle
    daemons ticking while the rest of the suite runs)."""
    mine = None
    if "tmp_path" in request.fixturenames:
        mine = Path(request.getfixturevalue("tmp_path")).resolve()
    yield
    if mine is None:
        return
    from spot_workflows.backends.local import LocalCloudClient

    for state_dir in _local_cloud_dirs():
        if mine in state_dir.parents:
            try:
                LocalCloudClient(state_dir, start=False).stop(reason="test over")
            except Exception as exc:  # best effort
                print(f"could not stop the local cloud of {state_dir}: {exc}")
