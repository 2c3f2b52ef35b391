"""Simulated spot markets for the local backend: when spot capacity exists and when it is taken.

One class per way of deciding: a fixed schedule, a seeded Poisson process, or a replayed
availability trace (``shared/traces`` format). Times are seconds on the backend's clock; each
market is told when the local backend starts (``t0``) and asked two questions:

* ``available(t)``: may a spot attempt start at time ``t``?
* ``reclaim_at(n, started)``: when is the ``n``-th spot attempt (0-based) that started at
  ``started`` reclaimed (``None``: never)?
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from spot_workflows.errors import ConfigError


class SpotMarket(Protocol):
    def available(self, t: float) -> bool: ...

    def reclaim_at(self, n: int, started: float) -> float | None: ...


@dataclass
class ScheduledMarket:
    """The n-th spot attempt is reclaimed ``reclaims[n]`` seconds after it starts; later ones never.

    ``unavailable``: windows ``(start, end)`` in seconds after ``t0`` with no spot capacity.
    """

    reclaims: Sequence[float] = ()
    unavailable: Sequence[tuple[float, float]] = ()
    t0: float = 0.0

    def __post_init__(self) -> None:
        if any(r <= 0 for r in self.reclaims):
            raise ConfigError("ScheduledMarket reclaims must be positive seconds after start")
        for a, b in self.unavailable:
            if b <= a:
                raise ConfigError(f"unavailable window ({a}, {b}) must end after it starts")

    def available(self, t: float) -> bool:
        rel = t - self.t0
        return not any(a <= rel < b for a, b in self.unavailable)

    def reclaim_at(self, n: int, started: float) -> float | None:
        return started + self.reclaims[n] if n < len(self.reclaims) else None


@dataclass
class PoissonMarket:
    """Reclaims arrive as a Poisson process (``rate_per_hour``), seeded for reproducibility."""

    rate_per_hour: float
    seed: int = 0
    t0: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rate_per_hour <= 0:
            raise ConfigError("PoissonMarket rate_per_hour must be > 0")
        self._rng = random.Random(self.seed)

    def available(self, t: float) -> bool:
        return True

    def reclaim_at(self, n: int, started: float) -> float | None:
        return started + self._rng.expovariate(self.rate_per_hour / 3600.0)


@dataclass
class TraceMarket:
    """Replays an availability trace: spot exists at tick k iff ``data[k] > 0``.

    ``tick_seconds`` compresses the trace's ``gap_seconds`` (e.g. 600 s ticks replayed as 1 s) so
    a days-long trace plays in minutes. Past the end of the trace, the last value holds.
    """

    data: Sequence[int]
    tick_seconds: float
    start_tick: int = 0
    t0: float = 0.0

    @classmethod
    def from_file(cls, path: str | Path, *, tick_seconds: float | None = None, start_tick: int = 0):
        try:
            doc = json.loads(Path(path).read_text())
            data = [int(x) for x in doc["data"]]
            gap = float(doc.get("metadata", {}).get("gap_seconds", 600))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"trace {path} is not a spot trace ({{'metadata': {{'gap_seconds': N}}, "
                f"'data': [0/1, ...]}}): {exc}"
            ) from exc
        if not data:
            raise ConfigError(f"trace {path} has no data points")
        return cls(data=data, tick_seconds=tick_seconds or gap, start_tick=start_tick)

    def _tick(self, t: float) -> int:
        return self.start_tick + max(0, math.floor((t - self.t0) / self.tick_seconds))

    def _value(self, k: int) -> int:
        return self.data[min(k, len(self.data) - 1)]

    def available(self, t: float) -> bool:
        return self._value(self._tick(t)) > 0

    def reclaim_at(self, n: int, started: float) -> float | None:
        k = self._tick(started) + 1
        while k < len(self.data):
            if self.data[k] <= 0:
                return self.t0 + (k - self.start_tick) * self.tick_seconds
            k += 1
        return None


class NeverReclaimed:
    """A market with unlimited spot capacity that never reclaims (plain local runs)."""

    t0: float = 0.0

    def available(self, t: float) -> bool:
        return True

    def reclaim_at(self, n: int, started: float) -> float | None:
        return None
