"""Whether the runner that recorded an attempt is still there to submit it. An owner names its
host and process (``host:pid:token``, see :func:`~spot_workflows.ledger.runner_id`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from spot_workflows.core.outcomes import Attempt


def owner_gone(attempt: Attempt, *, clock: Callable[[], float], grace_s: float) -> bool:
    """Whether the runner that owns a recorded-but-unsubmitted attempt is gone: a process of
    this host that no longer runs, or (any host) silent for ``grace_s``."""
    host, _, rest = (attempt.owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return clock() - attempt.submitted_at > grace_s
