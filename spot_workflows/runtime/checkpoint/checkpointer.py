"""Checkpointer: resume, save cadence and emergency save, used inside the worker process.

The orchestrator sets the worker contract variables (``SPOT_CHECKPOINT_URI``, ``SPOT_STEP_KEY``,
``SPOT_ATTEMPT``, ``SPOT_CAPACITY``, ``SPOT_NOTICE_SOURCE``); the ``spot-run`` wrapper also sets
``SPOT_NOTICE_FILE``, where it writes the :class:`TerminationNotice` JSON just before it sends the
child SIGTERM. A training loop restores, saves on cadence, and on a stop request saves once more
and exits with :data:`RESERVED_EXIT_CODE` (75) so the attempt is classified PREEMPTED.

Used without ``spot-run`` (no ``SPOT_RUN_WRAPPED=1``) and with the attempt known, the Checkpointer
also does spot-run's share of the worker contract: :meth:`Checkpointer.restore` first waits until
the attempt owns the step (exits 0 when it was cancelled as raced), and from then on a thread
watches the step's handoff marker for the attempt (a HANDOFF notice is a stop request).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from pydantic import ValidationError

from spot_workflows.core.cadence import adaptive_interval, observed_mtbf
from spot_workflows.core.outcomes import RESERVED_EXIT_CODE, Capacity, TerminationNotice
from spot_workflows.errors import ConfigError, LedgerError
from spot_workflows.runtime.checkpoint.emergency_save import (  # noqa: F401  (re-exported)
    EmergencySaveReport,
    timed_emergency_save,
)
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore, Manifest
from spot_workflows.runtime.store.handoff import WRAPPED_ENV, own_step_or_exit, watch_marker

log = logging.getLogger("spot_workflows.checkpoint")

RESERVED_METADATA_KEYS = frozenset({"attempt", "capacity", "emergency", "step_key"})
"""Keys the Checkpointer writes into every manifest's metadata; user metadata may not use them."""


@dataclass(frozen=True)
class Restored:
    """The checkpoint a run resumes from."""

    step: int
    manifest: Manifest
    store: CheckpointStore

    def read(self, name: str) -> bytes:
        """Contents of one file of the checkpoint, checksum-verified."""
        return self.store.read_file(self.manifest, name)

    def restore_to(self, directory: str | os.PathLike[str]) -> Path:
        """Copy every file of the checkpoint into a local directory, checksum-verified."""
        return self.store.restore_to(self.manifest, directory)

    @property
    def progress(self) -> float | None:
        return self.manifest.progress


class Checkpointer:
    """Cadence, resume and emergency save on top of a :class:`CheckpointStore`."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        handle_signals: bool = True,
        notice_file: str | None = None,
        attempt: int | None = None,
        capacity: Capacity | str | None = None,
        step_key: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        adaptive: bool = False,
        mtbf_s: float | None = None,
        own_step: bool | None = None,
        handoff_poll_s: float | None = None,
    ) -> None:
        if every_steps is not None and (isinstance(every_steps, bool) or every_steps < 1):
            raise ConfigError(f"every_steps must be an integer >= 1 or None, got {every_steps!r}")
        self.store = store
        self.every_steps = every_steps
        self.every_seconds: float | None = None
        self.set_interval(every_seconds)
        self.notice_file = notice_file
        self.attempt = attempt
        if capacity is not None and capacity not in set(Capacity):
            raise ConfigError(f"capacity must be SPOT or ON_DEMAND, got {capacity!r}")
        self.capacity = Capacity(capacity) if capacity is not None else None
        self.step_key = step_key
        self._clock = clock
        self._wall = wall_clock
        self._last_step = 0
        self._last_save_at = clock()
        self._last_save_seconds: float | None = None
        self._stop = threading.Event()
        self._notice: TerminationNotice | None = None
        self._previous_handler: Any = None
        self._installed = False
        self.adaptive = adaptive
        self.mtbf_s = mtbf_s
        if own_step is None:  # spot-run waited for ownership and watches the marker already
            own_step = os.environ.get(WRAPPED_ENV) != "1"
        self.own_step = own_step
        self.handoff_poll_s = handoff_poll_s
        self._handoff_stop = threading.Event()
        self._handoff_thread: threading.Thread | None = None
        if adaptive:
            if every_seconds is not None:
                raise ConfigError(
                    "adaptive cadence sets every_seconds itself: pass one or the other"
                )
            if self.mtbf_s is None:
                self.mtbf_s = self._ledger_mtbf()
            self.set_interval(adaptive_interval(None, self.mtbf_s))
        if handle_signals:
            self._install_handler()

    @classmethod
    def from_env(
        cls,
        *,
        keep_last: int = 3,
        storage_options: dict[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> Checkpointer:
        """Build from the orchestrator's SPOT_* variables; ``kw`` goes to the constructor."""
        env = os.environ if environ is None else environ
        uri = env.get("SPOT_CHECKPOINT_URI")
        if not uri:
            raise ConfigError(
                "SPOT_CHECKPOINT_URI is not set: run this script through spot-workflows (or "
                "spot-run), or set SPOT_CHECKPOINT_URI yourself, e.g. "
                "SPOT_CHECKPOINT_URI=file:///tmp/ckpt/my-step"
            )
        attempt_raw = env.get("SPOT_ATTEMPT")
        try:
            attempt = int(attempt_raw) if attempt_raw else None
        except ValueError:
            raise ConfigError(f"SPOT_ATTEMPT must be an integer, got {attempt_raw!r}") from None
        capacity_raw = env.get("SPOT_CAPACITY") or None
        if capacity_raw is not None and capacity_raw not in Capacity.__members__:
            raise ConfigError(f"SPOT_CAPACITY must be SPOT or ON_DEMAND, got {capacity_raw!r}")
        kw.setdefault("attempt", attempt)
        kw.setdefault("capacity", capacity_raw)
        kw.setdefault("step_key", env.get("SPOT_STEP_KEY") or None)
        kw.setdefault("notice_file", env.get("SPOT_NOTICE_FILE") or None)
        kw.setdefault("own_step", env.get(WRAPPED_ENV) != "1")
        store = CheckpointStore(uri, keep_last=keep_last, storage_options=storage_options)
        return cls(store, **kw)

    # -- signals -------------------------------------------------------------------------------

    def _install_handler(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "Checkpointer created outside the main thread: SIGTERM handler not installed; "
                "call request_stop() from your own handler instead"
            )
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()  # nothing else here: a signal handler must not do I/O or take locks

    def close(self) -> None:
        """Put back the SIGTERM handler that was there before this Checkpointer (and stop
        watching the handoff marker)."""
        self._handoff_stop.set()
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
            self._installed = False

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cadence -------------------------------------------------------------------------------

    def set_interval(self, seconds: float | None) -> None:
        """Change the time-based cadence (None disables it); for adaptive cadence policies."""
        if seconds is not None and (isinstance(seconds, bool) or not seconds > 0):
            raise ConfigError(f"checkpoint interval must be > 0 seconds or None, got {seconds!r}")
        self.every_seconds = None if seconds is None else float(seconds)

    def should_save(self, step: int) -> bool:
        """True when ``every_steps`` steps or ``every_seconds`` seconds passed since the last save."""
        if self.every_steps is not None and step - self._last_step >= self.every_steps:
            return True
        return (
            self.every_seconds is not None
            and self._clock() - self._last_save_at >= self.every_seconds
        )

    def _ledger_mtbf(self) -> float | None:
        """Mean time between reclaims observed on this step's ledger (None before any)."""
        from spot_workflows.ledger import read_attempts  # the one reader of the ledger format

        try:
            attempts = read_attempts(self.store)
        except LedgerError:
            log.warning("ledger.json unreadable; adaptive cadence uses its MTBF prior")
            return None
        return observed_mtbf(attempts, self._wall()) if attempts is not None else None

    @property
    def last_save_seconds(self) -> float | None:
        """How long the last successful save took (feeds interval policies such as Young/Daly)."""
        return self._last_save_seconds

    # -- resume and save -----------------------------------------------------------------------

    def restore(self) -> Restored | None:
        """The newest valid checkpoint, or None when the step starts from scratch.

        Without spot-run, first waits until this attempt owns the step (see the module doc)."""
        if self.own_step and self.attempt is not None and self._handoff_thread is None:
            own_step_or_exit(self.store, self.attempt, say=log.warning)
            every = self.handoff_poll_s or _env_seconds("SPOT_NOTICE_POLL_S", 5.0)
            self._handoff_thread = watch_marker(
                self.store,
                self.attempt,
                on_notice=self.request_stop,
                every_s=every,
                stop=self._handoff_stop,
                step_key=self.step_key,
            )
        manifest = self.store.latest()
        if manifest is None:
            log.info("no checkpoint in %s: starting from scratch", self.store.uri)
            return None
        self._last_step = manifest.step
        self._last_save_at = self._clock()
        log.info("resuming from checkpoint step %d in %s", manifest.step, self.store.uri)
        return Restored(step=manifest.step, manifest=manifest, store=self.store)

    def _metadata(self, metadata: dict[str, Any] | None, *, emergency: bool) -> dict[str, Any]:
        clash = RESERVED_METADATA_KEYS & set(metadata or {})
        if clash:
            raise ConfigError(f"metadata keys {sorted(clash)} are reserved by spot-workflows")
        return {
            **(metadata or {}),
            "attempt": self.attempt,
            "capacity": self.capacity.value if self.capacity else None,
            "step_key": self.step_key,
            "emergency": emergency,
        }

    def _save(
        self,
        step: int,
        files: Mapping[str, bytes | os.PathLike[str]],
        progress: float | None,
        metadata: dict[str, Any] | None,
        *,
        emergency: bool,
    ) -> Manifest:
        started = self._clock()
        manifest = self.store.save(
            step, files, progress=progress, metadata=self._metadata(metadata, emergency=emergency)
        )
        finished = self._clock()
        self.record_save(step, finished - started, at=finished)
        return manifest

    def record_save(self, step: int, seconds: float, *, at: float | None = None) -> None:
        """Count a save of ``step`` that blocked training ``seconds`` (the cadence restarts; the
        adaptive interval uses it). ``save()`` calls it; so does the async checkpointer, with
        its stall time, when it takes a snapshot."""
        self._last_save_at = self._clock() if at is None else at
        self._last_save_seconds = seconds
        if self.adaptive:  # Young/Daly from the measured save cost and the observed MTBF
            self.set_interval(adaptive_interval(self._last_save_seconds, self.mtbf_s))
        self._last_step = step

    def save(
        self,
        step: int,
        files: Mapping[str, bytes | os.PathLike[str]],
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Manifest:
        """Save a regular checkpoint (see :meth:`CheckpointStore.save`)."""
        return self._save(step, files, progress, metadata, emergency=False)

    # -- stop and emergency save ---------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM arrived (when handling signals) or :meth:`request_stop` was called."""
        return self._stop.is_set()

    def request_stop(self, notice: TerminationNotice | None = None) -> None:
        """Ask the loop to stop (e.g. from a notice watcher thread); keeps the notice's deadline."""
        if notice is not None:
            self._notice = notice
        self._stop.set()

    @property
    def notice(self) -> TerminationNotice | None:
        """The notice given to request_stop(), else the one spot-run wrote to SPOT_NOTICE_FILE."""
        if self._notice is not None or not self.notice_file:
            return self._notice
        try:
            raw = Path(self.notice_file).read_text()
        except OSError:
            return None
        try:
            self._notice = TerminationNotice.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("ignoring unreadable notice file %s: %s", self.notice_file, exc)
        return self._notice

    def emergency_save(
        self,
        step: int,
        files: Mapping[str, bytes | os.PathLike[str]],
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EmergencySaveReport:
        """Save after a stop request, timing it against the notice deadline; never raises.

        When the save fails or finishes after the deadline, the report is logged as an ERROR and
        also written (best-effort) to ``emergency-<step>.json`` in the store.
        """
        return self.run_emergency_save(
            step, lambda: self._save(step, files, progress, metadata, emergency=True)
        )

    def run_emergency_save(self, step: int, save: Callable[[], object]) -> EmergencySaveReport:
        """Run ``save()`` as the emergency save of ``step``, timed against the notice deadline
        and reported like :meth:`emergency_save` (the async checkpointer's flush uses this)."""
        return timed_emergency_save(
            self.store, step, save, notice=self.notice, wall_clock=self._wall
        )

    def exit_preempted(self) -> NoReturn:
        """Exit with the reserved code (75) so the attempt counts as PREEMPTED, not an error."""
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(RESERVED_EXIT_CODE)


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default
