"""The local spot cloud: real subprocesses, simulated spot markets, local metadata endpoints.

A daemon per state directory (:mod:`.daemon`, state machine in :mod:`.cloud`) owns the jobs, the
markets and the metadata endpoints; :class:`LocalBackend` (:mod:`.client`) is how any process
talks to it. See docs/local-backend.md.
"""

from spot_workflows.backends.local.client import (
    STATE_DIR_ENV,
    LocalBackend,
    LocalCloudClient,
    default_state_dir,
    resolve_python,
)

__all__ = [
    "STATE_DIR_ENV",
    "LocalBackend",
    "LocalCloudClient",
    "default_state_dir",
    "resolve_python",
]
