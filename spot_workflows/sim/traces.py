"""Spot availability traces and the scenario rule.

A trace file is ``{"metadata": {"gap_seconds": N}, "data": [...]}``; spot capacity is available
at tick ``k`` iff ``data[k] > 0`` (these files store availability, not its complement).

The public traces of skypilot-org/spot-traces ship with the package (``spot_workflows/data/traces``,
attribution in its README.md): ``load_trace`` takes either a path to a trace file or the name of a
packaged trace such as ``aws-10-26-2022/us-west-2a_v100_1``; ``available_traces`` lists the names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
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
    if not (gap_s > 0 and math.isfinite(gap_s)):
        raise ConfigError(f"trace {name}: gap_seconds must be a finite number > 0, got {gap_s!r}")
    if not isinstance(data, (list, tuple)):
        raise ConfigError(f"trace {name}: data must be a list of 0/1 values, got {data!r:.40}")
    if not data:
        raise ConfigError(f"trace {name} has no data points")
    for k, x in enumerate(data):
        if not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(
                f"trace {name}: data[{k}] is {x!r:.40}; every data point must be a number "
                "(> 0: spot available, 0: not)"
            )
    return Trace(name=name, gap_s=float(gap_s), available=tuple(x > 0 for x in data))


def _packaged_root() -> Traversable:
    return resources.files("spot_workflows.data").joinpath("traces")


def _walk(node: Traversable, prefix: str) -> dict[str, Traversable]:
    found: dict[str, Traversable] = {}
    for child in node.iterdir():
        if child.is_dir():
            found.update(_walk(child, f"{prefix}{child.name}/"))
        elif child.name.endswith(".json"):
            found[prefix + child.name.removesuffix(".json")] = child
    return found


def _packaged() -> dict[str, Traversable]:
    root = _packaged_root()
    return _walk(root, "") if root.is_dir() else {}


def available_traces() -> list[str]:
    """Names of the traces shipped with the package, e.g. ``aws-10-26-2022/us-west-2a_v100_1``."""
    return sorted(_packaged())


def _parse(text: str, name: str, where: str) -> Trace:
    try:
        doc = json.loads(text)
        gap = float(doc.get("metadata", {}).get("gap_seconds", 600))
        data = doc["data"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"trace {where} is not a spot trace ({{'metadata': {{'gap_seconds': N}}, "
            f"'data': [0/1, ...]}}): {exc}"
        ) from exc
    return trace_from_data(name, gap, data)


def load_trace(ref: str | Path) -> Trace:
    """Read one trace: a path to a trace file, or the name of a packaged trace (``.json`` optional).

    An existing file wins over a packaged name; the errors name the file or list the names.
    """
    path = Path(ref)
    if path.is_file():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"trace {path}: cannot read it: {exc}") from exc
        return _parse(text, path.stem, str(path))
    name = str(ref).replace("\\", "/").strip().removeprefix("./").removesuffix(".json")
    packaged = _packaged()
    if name in packaged:
        return _parse(packaged[name].read_text(), name.rsplit("/", 1)[-1], name)
    if path.is_dir():
        raise ConfigError(f"trace {ref} is a directory; give one trace file or a trace name")
    raise ConfigError(
        f"trace {ref!s}: no such file and no packaged trace of that name; give a path to a trace "
        f"file or one of: {', '.join(sorted(packaged)) or '(none packaged)'}"
    )
