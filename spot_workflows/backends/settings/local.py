"""Settings of the local backend: the local spot cloud's state directory and a simulated market."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spot_workflows.backends.settings.common import BackendSettings, SettingError
from spot_workflows.core.outcomes import Capacity
from spot_workflows.core.placements import Placement
from spot_workflows.errors import ConfigError

if TYPE_CHECKING:
    from spot_workflows.backends.local import LocalBackend
    from spot_workflows.backends.local.events import LocalEventSource
    from spot_workflows.backends.local.market import SpotMarket

NonNegative = Annotated[float, Field(ge=0)]
EVENTS_FILE = "events.jsonl"


class LocalMarketSettings(BaseModel):
    """One simulated spot market of the local spot cloud (for a named placement): a schedule of
    reclaims (with optional windows without spot capacity), a Poisson process, or a trace."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reclaim_after_s: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    spot_unavailable: list[tuple[NonNegative, NonNegative]] = Field(default_factory=list)
    reclaim_after_checkpoint: bool = False
    poisson_rate_per_hour: float | None = Field(default=None, gt=0)
    market_seed: int = 0
    trace_path: str | None = None
    trace_tick_s: float | None = Field(default=None, gt=0)

    def make_market(self) -> SpotMarket:
        return _make_market(self)


class LocalSettings(BackendSettings):
    """The local backend: real subprocesses on this machine and a simulated spot market.

    Steps run on the local spot cloud of ``state_dir`` (one daemon per directory, shared by every
    process). Choose at most one market: a schedule of reclaims (with optional windows without spot
    capacity), a Poisson process, or a trace; with none, spot capacity is never reclaimed.
    """

    KIND = "local"
    BACKEND = "local"
    RENAMED = {"reclaims": "reclaim_after_s", "unavailable": "spot_unavailable"}

    state_dir: str | None = Field(
        default=None,
        description=(
            "State directory of the local spot cloud; defaults to $SPOT_WORKFLOWS_LOCAL_DIR, "
            "else ~/.spot-workflows/local."
        ),
    )
    reclaim_after_s: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=list,
        description=(
            "Scheduled market: the n-th spot attempt of a step is reclaimed this many seconds "
            "after it starts; later attempts are never reclaimed."
        ),
    )
    spot_unavailable: list[tuple[NonNegative, NonNegative]] = Field(
        default_factory=list,
        description="Scheduled market: (start, end) windows, in seconds, with no spot capacity.",
    )
    reclaim_after_checkpoint: bool = Field(
        default=False,
        description=(
            "Scheduled market: count reclaim_after_s from each attempt's first new checkpoint "
            "instead of its start (every reclaimed attempt has made progress, whatever the load)."
        ),
    )
    poisson_rate_per_hour: float | None = Field(
        default=None, gt=0, description="Poisson market: reclaims per hour of spot run time."
    )
    market_seed: int = Field(default=0, description="Seed of the Poisson market.")
    trace_path: str | None = Field(
        default=None, description="Trace market: path of an availability trace (JSON)."
    )
    trace_tick_s: float | None = Field(
        default=None, gt=0, description="Trace market: seconds each trace tick is replayed as."
    )
    notice_window_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between the termination notice and SIGTERM (AWS gives 120).",
    )
    grace_s: float = Field(default=5.0, ge=0, description="Seconds from SIGTERM to SIGKILL.")
    placements: list[Placement] | None = Field(
        default=None,
        description=(
            "Markets of the local spot cloud to run in: a list of {name (the market), capacity "
            "(SPOT or ON_DEMAND), usd_per_hour}; default: its one spot market and on-demand."
        ),
    )

    markets: dict[str, LocalMarketSettings] | None = Field(
        default=None,
        description=(
            "Per-placement markets: {placement name: {reclaim_after_s, spot_unavailable, "
            "poisson_rate_per_hour, trace_path, ...}}; a SPOT placement not named here uses the "
            "market set by the fields above."
        ),
    )

    @model_validator(mode="after")
    def _markets_name_placements(self) -> Self:
        if not self.markets:
            return self
        spot = [p.name for p in self.placements or () if p.capacity is Capacity.SPOT]
        unknown = sorted(set(self.markets) - set(spot))
        if unknown:
            raise SettingError(
                "markets",
                f"markets {unknown} name no SPOT placement; name one of {spot or 'the placements'}",
            )
        return self

    @field_validator("spot_unavailable")
    @classmethod
    def _windows(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for start, end in value:
            if end <= start:
                raise ValueError(f"window ({start}, {end}) must end after it starts")
        return value

    @model_validator(mode="after")
    def _one_market(self) -> Self:
        chosen = [
            name
            for name, used in (
                ("reclaim_after_s/spot_unavailable", self.reclaim_after_s or self.spot_unavailable),
                ("poisson_rate_per_hour", self.poisson_rate_per_hour is not None),
                ("trace_path", self.trace_path is not None),
            )
            if used
        ]
        if len(chosen) > 1:
            message = f"choose one spot market, not {' and '.join(chosen)}"
            raise SettingError(chosen[-1], message)
        return self

    # -- builders ---------------------------------------------------------------------------------
    def cloud_state_dir(self) -> Path:
        """The local spot cloud's state directory (one daemon per directory)."""
        from spot_workflows.backends.local import default_state_dir

        if self.state_dir:
            return Path(self.state_dir).expanduser().resolve()
        return default_state_dir()

    def events_path(self) -> Path:
        """The local cloud's JSON-lines market events (notices, reclaims)."""
        return self.cloud_state_dir() / EVENTS_FILE

    def make_market(self) -> SpotMarket:
        """The simulated spot market these settings choose."""
        return _make_market(self)

    def build_backend(self) -> LocalBackend:
        """A client of the local spot cloud (not connected yet: ``start()`` or ``with``)."""
        from spot_workflows.backends.local import LocalBackend

        extra = {}
        if self.placements is not None:
            if "placements" not in inspect.signature(LocalBackend).parameters:
                raise ConfigError(
                    "placements: this local backend runs one spot market; remove placements"
                )
            extra["placements"] = tuple(self.placements)
            if self.markets:
                extra["markets"] = {n: m.make_market() for n, m in self.markets.items()}
        return LocalBackend(
            state_dir=self.cloud_state_dir(),
            market=self.make_market(),
            notice_window_s=self.notice_window_s,
            grace_s=self.grace_s,
            **extra,
        )

    def notice_source(self, *, since: float | None) -> LocalEventSource:
        """Termination notices of the local cloud: its events file."""
        from spot_workflows.backends.local.events import LocalEventSource

        return LocalEventSource(path=self.events_path(), since=since)


def _make_market(cfg: LocalSettings | LocalMarketSettings) -> SpotMarket:
    from spot_workflows.backends.local import market

    if cfg.poisson_rate_per_hour is not None:
        return market.PoissonMarket(rate_per_hour=cfg.poisson_rate_per_hour, seed=cfg.market_seed)
    if cfg.trace_path is not None:
        return market.TraceMarket.from_file(cfg.trace_path, tick_seconds=cfg.trace_tick_s)
    if cfg.reclaim_after_s or cfg.spot_unavailable:
        return market.ScheduledMarket(
            reclaims=tuple(cfg.reclaim_after_s),
            unavailable=tuple(cfg.spot_unavailable),
            after_checkpoint=cfg.reclaim_after_checkpoint,
        )
    return market.NeverReclaimed()
