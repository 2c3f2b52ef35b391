"""Spot availability traces (``shared/traces`` format) and the scenario rule.

A trace file is ``{"metadata": {"gap_seconds": N}, "data": [...]}``; spot capacity is available
at tick ``k`` iff ``data[k] > 0`` (these files store availability, not its complement).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from spot_workflows.errors import ConfigError


@dataclass(frozen=True)
class Trace:
    name: str
    gap_s: float
    available: tuple[bool, ...]

    @property
    def ticks(self) -> int:
        return len(self.available)

    @property
    def hours(self) -> float:
        return self.ticks * self.gap_s / 3600

    def needed_ticks(self, deadline_hours: float) -> int:
        """Ticks one scenario may touch: ``ceil(D * 3600 / gap) + 2``."""
        return math.ceil(deadline_hours * 3600 / self.gap_s) + 2

    def starts(self, deadline_hours: float, scenarios: int) -> list[int]:
        """Scenario start ticks ``floor(k * (T - n) / S)`` for ``k = 0 .. S-1``."""
        n = self.needed_ticks(deadline_hours)
        if n > self.ticks:
            raise ConfigError(
                f"trace {self.name} has {self.ticks} ticks ({self.hours:.1f} h) but a "
                f"{deadline_hours:g} h deadline needs {n}; use a longer trace or a shorter deadline"
            )
        if scenarios < 1:
            raise ConfigError(f"need at least one scenario, got {scenarios}")
        return [math.floor(k * (self.ticks - n) / scenarios) for k in range(scenarios)]


def trace_from_data(name: str, gap_s: float, data: list[int] | list[bool]) -> Trace:
    if not gap_s > 0:
        raise ConfigError(f"trace {name}: gap_seconds must be > 0, got {gap_s!r}")
    if not data:
        raise ConfigError(f"trace {name} has no data points")
    return Trace(name=name, gap_s=float(gap_s), available=tuple(float(x) > 0 for x in data))


def load_trace(path: str | Path) -> Trace:
    """Read one trace file; the error names the file and the expected shape."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        gap = float(doc.get("metadata", {}).get("gap_seconds", 600))
        data = list(doc["data"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"trace {path} is not a spot trace ({{'metadata': {{'gap_seconds': N}}, "
            f"'data': [0/1, ...]}}): {exc}"
        ) from exc
    return trace_from_data(path.stem, gap, data)
