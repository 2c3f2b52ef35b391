"""``spot-run``: kept at this path for job definitions that run ``python -m
spot_workflows.runtime.entrypoint``; the code is in :mod:`spot_workflows.runtime.worker.entrypoint`."""

from spot_workflows.runtime.worker.entrypoint import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
