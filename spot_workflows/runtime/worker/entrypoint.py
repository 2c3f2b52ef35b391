"""``spot-run -- CMD ARGS...``: run any command so that a spot reclaim becomes a clean checkpoint.

The wrapper starts CMD in its own process group, watches the metadata endpoints
(:class:`TerminationWatcher`), and on a termination notice (or its own SIGTERM/SIGINT) writes the
notice JSON to ``SPOT_NOTICE_FILE``, sends CMD the forward signal (SIGTERM) and gives it until the
notice's deadline (or ``--grace``) to save and exit before SIGKILLing its process group.

Exit code: CMD's own when no notice came (a signal death is 128 + signum); after a notice, 0 if
CMD exited 0, else :data:`RESERVED_EXIT_CODE` (75), which the classifier reads as PREEMPTED.

With ``SPOT_CHECKPOINT_URI`` and ``SPOT_ATTEMPT`` set (every attempt spot-workflows starts), the
wrapper first waits until its attempt owns the step (see :mod:`spot_workflows.runtime.store.handoff`):
it exits 0 without starting CMD when its attempt was cancelled as raced, and 75 when it did not
get the step within ``SPOT_OWNERSHIP_WAIT_S``; it also watches the step's handoff marker for its
attempt beside the metadata endpoints (a HANDOFF notice: save, exit 75).
See docs/worker-contract.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from spot_workflows.core.outcomes import RESERVED_EXIT_CODE, NoticeKind, TerminationNotice
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.worker.notices import SOURCES, TerminationWatcher

if TYPE_CHECKING:
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

DEFAULT_GRACE_S = 25.0  # when a notice carries no deadline (SIGTERM, GCE maintenance)
MIN_GRACE_S = 1.0  # even a notice whose deadline has passed leaves the child this long
PREFIX = "spot-run:"


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def _parse_signal(value: str) -> signal.Signals:
    name = value.strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown signal {value!r} (e.g. TERM, INT, USR1)"
        ) from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be > 0 seconds")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spot-run",
        description="Run CMD; on a spot termination notice, ask it to checkpoint (SIGTERM) and "
        f"exit {RESERVED_EXIT_CODE} so the attempt is retried from its checkpoint.",
        epilog="example: spot-run --source aws -- python train.py --epochs 10",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=os.environ.get("SPOT_NOTICE_SOURCE") or "auto",
        help="where notices come from (default: $SPOT_NOTICE_SOURCE or auto)",
    )
    parser.add_argument(
        "--signal",
        dest="forward_signal",
        metavar="SIG",
        type=_parse_signal,
        default=signal.SIGTERM,
        help="signal sent to CMD on a notice (default TERM)",
    )
    parser.add_argument(
        "--grace",
        type=_positive,
        metavar="SECONDS",
        default=None,
        help="seconds CMD gets after a notice before SIGKILL "
        f"(default: until the notice's deadline, or {DEFAULT_GRACE_S:g} s without one)",
    )
    parser.add_argument(
        "--poll",
        type=_positive,
        metavar="SECONDS",
        default=None,
        help="seconds between metadata polls (default: $SPOT_NOTICE_POLL_S or 5, AWS's advice)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


class SpotRun:
    """One run of the wrapper; :meth:`run` returns the exit code."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        source: str = "auto",
        forward_signal: signal.Signals = signal.SIGTERM,
        grace: float | None = None,
        poll: float = 5.0,
        watcher_timeout: float = 2.0,
        store: CheckpointStore | None = None,
        attempt: int | None = None,
        step_key: str | None = None,
        ownership_wait_s: float | None = None,
    ) -> None:
        if not command:
            raise ConfigError("spot-run needs a command: spot-run [options] -- CMD ARGS...")
        self.command = list(command)
        self.forward_signal = forward_signal
        self.grace = grace
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # reentrant: safe in signal handlers
        self.store = store if attempt is not None else None
        self.attempt = attempt
        self.ownership_wait_s = ownership_wait_s
        checks = []
        if self.store is not None and attempt is not None:
            from spot_workflows.runtime.store.handoff import marker_check

            checks.append(marker_check(self.store, attempt, step_key=step_key))
        self.watcher = TerminationWatcher(
            source=source,
            poll_interval=poll,
            timeout=watcher_timeout,
            on_notice=lambda notice: self.events.put(("notice", notice)),
            checks=checks,
        )
        self.notice: TerminationNotice | None = None
        self.child: subprocess.Popen | None = None
        self._signals_seen = 0
        self._kill_at: float | None = None

    # -- the run ------------------------------------------------------------------------------
    def own_step(self) -> int | None:
        """Wait until this attempt owns the step: None to go on, else the exit code."""
        if self.store is None or self.attempt is None:
            return None
        from spot_workflows.runtime.store.handoff import (
            DEFAULT_OWNERSHIP_WAIT_S,
            await_ownership,
        )

        wait_s = (
            DEFAULT_OWNERSHIP_WAIT_S if self.ownership_wait_s is None else self.ownership_wait_s
        )
        verdict = await_ownership(self.store, self.attempt, timeout_s=wait_s, say=_say)
        if verdict.verdict == "own":
            return None
        if verdict.verdict == "raced":
            _say(f"attempt {self.attempt} was cancelled as raced; exiting without running")
            return 0
        _say(
            f"attempt {self.attempt} did not get the step within {wait_s:g}s "
            f"({verdict.describe()}); exiting {RESERVED_EXIT_CODE} without running "
            "(raise SPOT_OWNERSHIP_WAIT_S to wait longer)"
        )
        return RESERVED_EXIT_CODE

    def run(self) -> int:
        code = self.own_step()
        if code is not None:
            return code
        notice_file, tmpdir = self._notice_file()
        previous = self._install_handlers()
        try:
            env = dict(os.environ, SPOT_NOTICE_FILE=str(notice_file), SPOT_RUN_WRAPPED="1")
            try:
                self.child = subprocess.Popen(self.command, env=env, process_group=0)
            except OSError as exc:
                _say(f"cannot start {self.command[0]!r}: {exc}")
                return 127 if isinstance(exc, FileNotFoundError) else 126
            threading.Thread(target=self._reap, name="spot-run-child", daemon=True).start()
            self.watcher.start()
            code = self._loop(notice_file)
        finally:
            self.watcher.stop(wait=False)  # daemon thread; don't wait out a slow request
            self._restore_handlers(previous)
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
        return self._exit_code(code)

    def _loop(self, notice_file: Path) -> int:
        while True:
            timeout = None if self._kill_at is None else max(0.0, self._kill_at - time.monotonic())
            try:
                kind, value = self.events.get(timeout=timeout)
            except queue.Empty:
                _say("grace period over; killing the child's process group")
                self._kill_group()
                continue
            if kind == "exit":
                return value
            if kind == "notice":
                self._on_notice(value, notice_file)
            elif kind == "signal":
                self._on_signal(value, notice_file)

    def _on_notice(self, notice: TerminationNotice, notice_file: Path) -> None:
        if notice.kind is NoticeKind.REBALANCE:
            _say(f"rebalance recommendation from {notice.source} (advisory; child not signalled)")
            return
        if self.notice is not None:
            return
        self.notice = notice
        deadline = notice.deadline
        grace = self.grace
        if grace is None:
            if deadline is not None:
                grace = (deadline - datetime.now(UTC)).total_seconds()
            else:
                grace = DEFAULT_GRACE_S
        self._kill_at = time.monotonic() + max(MIN_GRACE_S, grace)
        try:
            _write_atomic(notice_file, notice.model_dump_json())
        except OSError as exc:
            _say(f"could not write the notice file {notice_file}: {exc}")
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError):
            self.child.send_signal(self.forward_signal)
        when = deadline.isoformat() if deadline is not None else "unknown"
        _say(
            f"{notice.kind.value} notice from {notice.source}, deadline {when}; "
            "asked child to checkpoint"
        )

    def _on_signal(self, signum: int, notice_file: Path) -> None:
        self._signals_seen += 1
        if self._signals_seen >= 2:
            _say(f"second {signal.Signals(signum).name}; killing the child's process group")
            self._kill_group()
            return
        if self.notice is not None:
            return  # the child was already asked to checkpoint
        now = datetime.now(UTC)
        grace = self.grace if self.grace is not None else DEFAULT_GRACE_S
        notice = TerminationNotice(
            kind=NoticeKind.SIGTERM,
            source="signal",
            deadline=now + timedelta(seconds=grace),
            seen_at=now,
            detail={"signal": signal.Signals(signum).name},
        )
        self.watcher.record(notice)  # sticky there too; on_notice queues it back to us
        if self.notice is None:
            self._on_notice(notice, notice_file)

    def _exit_code(self, code: int) -> int:
        if self.notice is None or code in (0, RESERVED_EXIT_CODE):
            return code
        _say(f"child did not confirm a checkpoint (exit {code})")
        return RESERVED_EXIT_CODE

    # -- plumbing -----------------------------------------------------------------------------
    def _reap(self) -> None:
        assert self.child is not None
        code = self.child.wait()
        self.events.put(("exit", code if code >= 0 else 128 - code))

    def _kill_group(self) -> None:
        self._kill_at = None
        assert self.child is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signal.SIGKILL)

    def _notice_file(self) -> tuple[Path, str | None]:
        given = os.environ.get("SPOT_NOTICE_FILE")
        if given:
            path = Path(given)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a notice file from an earlier run is not a notice for this one
            return path, None
        tmpdir = tempfile.mkdtemp(prefix="spot-run-")
        return Path(tmpdir) / "notice.json", tmpdir

    def _install_handlers(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # signal handlers only work on the main thread (tests call run() there)

        def handler(signum: int, _frame: object) -> None:
            self.events.put(("signal", signum))

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _restore_handlers(previous: dict[int, object]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _step_store(env: dict | os._Environ) -> tuple[CheckpointStore | None, int | None, float]:
    """(the step's checkpoint store, this attempt, the ownership wait) from the worker contract
    variables; no store (nothing to wait for or watch) when they are not set."""
    from spot_workflows.runtime.store.handoff import ownership_wait_s

    wait_s = ownership_wait_s(dict(env))
    uri, raw = env.get("SPOT_CHECKPOINT_URI"), env.get("SPOT_ATTEMPT")
    if not uri or not raw:
        return None, None, wait_s
    try:
        attempt = int(raw)
    except ValueError:
        raise ConfigError(f"SPOT_ATTEMPT must be an integer >= 1, got {raw!r}") from None
    if attempt < 1:
        raise ConfigError(f"SPOT_ATTEMPT must be an integer >= 1, got {raw!r}")
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    try:
        store = CheckpointStore(uri, keep_last=1)
    except ConfigError as exc:  # the child reports it if it uses the store; don't block it here
        _say(f"not watching the step's ledger or handoff marker: {exc}")
        return None, None, wait_s
    return store, attempt, wait_s


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        cut = args.index("--")
        options, command = args[:cut], args[cut + 1 :]
    else:
        options, command = args, None
    parser = build_parser()
    ns = parser.parse_args(options)
    command = command if command is not None else ns.command
    if not command:
        parser.error("missing command: spot-run [options] -- CMD ARGS...")
    poll = ns.poll
    if poll is None:
        try:
            poll = _positive(os.environ.get("SPOT_NOTICE_POLL_S") or "5")
        except argparse.ArgumentTypeError as exc:
            parser.error(f"SPOT_NOTICE_POLL_S: {exc}")
    logger = logging.getLogger("spot_workflows")
    if not logger.handlers and not logging.getLogger().handlers:  # a CLI process: warnings only
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PREFIX} %(message)s"))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
    try:
        store, attempt, wait_s = _step_store(os.environ)
        wrapper = SpotRun(
            command,
            source=ns.source,
            forward_signal=ns.forward_signal,
            grace=ns.grace,
            poll=poll,
            store=store,
            attempt=attempt,
            step_key=os.environ.get("SPOT_STEP_KEY") or None,
            ownership_wait_s=wait_s,
        )
    except ConfigError as exc:
        _say(str(exc))
        return 2
    return wrapper.run()


if __name__ == "__main__":
    sys.exit(main())
