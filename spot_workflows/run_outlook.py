"""What the planner sees of a step run beyond its ledger (an
:class:`~spot_workflows.core.deadline.Outlook`), as the runner measures it tick by tick:
checkpoint progress, how often the planner really runs, how long a stop takes, and, with a market
probe, whether spot is obtainable now and since when."""

from __future__ import annotations

from collections.abc import Callable

from spot_workflows.backends.base import Backend
from spot_workflows.core.deadline import Outlook
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

DEFAULT_STOP_LATENCY_S = 30.0
"""Cancel-to-exit estimate for a backend that states none (``stop_latency_s``)."""


class RunOutlook:
    """Planner inputs beyond the ledger for one runner of a step. Restart overhead, deadline and
    spend are derived from the ledger by the planner itself."""

    def __init__(self, backend: Backend, store: CheckpointStore) -> None:
        self._store = store
        self._last_tick_at: float | None = None
        self._spot_seen: bool | None = None
        self._spot_since: float | None = None
        self.stop_s: float = float(getattr(backend, "stop_latency_s", DEFAULT_STOP_LATENCY_S))
        """How long a stop takes until billing ends: the backend's estimate, raised to the
        longest stop measured here (the budget cap keeps this much spend in reserve)."""

    def stop_took(self, seconds: float) -> None:
        """A stop measured here took ``seconds``: the estimate becomes the longest one seen."""
        self.stop_s = max(self.stop_s, seconds)

    def at(
        self,
        now: float,
        *,
        tick: bool,
        poll_interval: float,
        deadline_s: float | None,
        spot_probe: Callable[[], bool | None] | None,
    ) -> Outlook:
        """The outlook at ``now``: checkpoint progress (deadline-aware policies only, i.e. with
        a ``deadline_s``: it reads the store) and how often the planner really runs (poll
        interval or the measured period, whichever is longer). ``tick``: this is a decision tick
        (it counts towards the measured period)."""
        period = poll_interval
        if self._last_tick_at is not None:
            period = max(period, now - self._last_tick_at)
        if tick:
            self._last_tick_at = now
        progress = available = since = None
        if deadline_s is not None:
            latest = self._store.latest()
            progress = latest.progress if latest is not None else None
            if spot_probe is not None:
                available = spot_probe()
                if available is not None and available is not self._spot_seen:
                    self._spot_seen, self._spot_since = available, now
                since = self._spot_since if available is not None else None
        return Outlook(
            progress=progress,
            tick_s=period,
            stop_s=self.stop_s,
            spot_available=available,
            spot_state_since=since,
        )
