"""Forked lanes for the reliability labs: run ``work(j)`` for j in 0..lanes-1, each in its own
forked process, and fail loudly if any lane failed (its exception goes to stderr)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def run_forked_lanes(lanes: int, work: Callable[[int], None], *, what: str) -> None:
    pids = []
    for j in range(lanes):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a lane
            code = 1
            try:
                work(j)
                code = 0
            except BaseException as exc:
                sys.stderr.write(f"lane {j}: {type(exc).__name__}: {exc}\n")
            finally:
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    if any(codes):
        raise RuntimeError(f"a {what} lane failed (exit codes {codes})")
