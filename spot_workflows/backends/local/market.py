"""Simulated spot markets for the local spot cloud: when spot capacity exists and when it is taken.

One class per way of deciding: a fixed schedule, a seeded Poisson process, or a replayed
availability trace (``{"metadata": {"gap_seconds": N}, "data": [0/1, ...]}``). Times are seconds
on the local cloud's clock. The local cloud keeps one market per step key, whichever process
submitted the step's attempts: it is told when it first saw the step (``t0``) and asked two
questions:

* ``available(t)``: may a spot attempt start at time ``t``?
* ``reclaim_at(n, started)``: when is the ``n``-th spot attempt (0-based) that started at
  ``started`` reclaimed (``None``: never)?
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
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
    ``after_checkpoint``: count ``reclaims[n]`` from the attempt's first new checkpoint instead of
    its start, so every reclaimed attempt has made progress whatever the machine's load (demos,
    examples and tests that must show a resume).
    """

    reclaims: Sequence[float] = ()
    unavailable: Sequence[tuple[float, float]] = ()
    t0: float = 0.0
    after_checkpoint: bool = False

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

    def __post_init__(self) -> None:
        if self.rate_per_hour <= 0:
            raise ConfigError("PoissonMarket rate_per_hour must be > 0")

    def available(self, t: float) -> bool:
        return True

    def reclaim_at(self, n: int, started: float) -> float | None:
        # a draw per (seed, n): the same schedule whichever process or daemon asks
        rng = random.Random(f"{self.seed}:{n}")
        return started + rng.expovariate(self.rate_per_hour / 3600.0)


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


class NeverReclaimed:  # noqa: B903 - a value class like the others
    """A market with unlimited spot capacity that never reclaims (plain local runs)."""

    t0: float = 0.0

    def available(self, t: float) -> bool:
        return True

    def reclaim_at(self, n: int, started: float) -> float | None:
        return None


def market_spec(market: SpotMarket | None) -> dict:
    """A market as a JSON-able spec (what a client sends the local cloud with each submission)."""
    if market is None or isinstance(market, NeverReclaimed):
        return {"kind": "never"}
    if isinstance(market, ScheduledMarket):
        return {
            "kind": "scheduled",
            "reclaims": [float(r) for r in market.reclaims],
            "unavailable": [[float(a), float(b)] for a, b in market.unavailable],
            "after_checkpoint": bool(market.after_checkpoint),
        }
    if isinstance(market, PoissonMarket):
        return {"kind": "poisson", "rate_per_hour": market.rate_per_hour, "seed": market.seed}
    if isinstance(market, TraceMarket):
        return {
            "kind": "trace",
            "data": [int(x) for x in market.data],
            "tick_seconds": market.tick_seconds,
            "start_tick": market.start_tick,
        }
    raise ConfigError(
        f"the local spot cloud cannot run a {type(market).__name__} market: use ScheduledMarket, "
        "PoissonMarket, TraceMarket or NeverReclaimed"
    )


def market_from_spec(spec: dict) -> SpotMarket:
    """The market a spec stands for (raises ConfigError for a malformed one)."""
    try:
        kind = spec.get("kind", "never")
        if kind == "never":
            return NeverReclaimed()
        if kind == "scheduled":
            return ScheduledMarket(
                reclaims=tuple(float(r) for r in spec.get("reclaims", ())),
                unavailable=tuple((float(a), float(b)) for a, b in spec.get("unavailable", ())),
                after_checkpoint=bool(spec.get("after_checkpoint", False)),
            )
        if kind == "poisson":
            return PoissonMarket(
                rate_per_hour=float(spec["rate_per_hour"]), seed=int(spec.get("seed", 0))
            )
        if kind == "trace":
            return TraceMarket(
                data=[int(x) for x in spec["data"]],
                tick_seconds=float(spec["tick_seconds"]),
                start_tick=int(spec.get("start_tick", 0)),
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"malformed market spec {spec!r}: {exc}") from exc
    raise ConfigError(f"unknown market kind {kind!r}: never, scheduled, poisson or trace")
