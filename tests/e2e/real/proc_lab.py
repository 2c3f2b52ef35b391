"""What the real-engine labs share: ports, log tails, process groups and the marker sweep.

Every process a lab starts carries ``MARKER=<lab root>`` in its environment (children inherit
it), so a sweep at teardown can find and end whatever is left, by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class LabError(RuntimeError):
    """The stack did not come up, or a wait ran out; the message ends with the logs' tails."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


def kill_group(popen: subprocess.Popen, *, grace_s: float) -> None:
    """SIGTERM the process group of ``popen`` (its own session); SIGKILL what is left of it
    after ``grace_s`` (the leader may exit while members of its group still run)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if popen.poll() is not None and not _group_alive(popen.pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=5.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def marked_processes(marker: str, root: Path) -> dict[int, str]:
    """Processes whose environment carries ``marker=root``: pid -> command line."""
    wanted = f"{marker}={root}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(entry.name)] = cmd.strip()
        except OSError:
            continue
    return found


def sweep(marker: str, root: Path, *, grace_s: float = 5.0) -> list[str]:
    """End every process started (directly or not) by the lab of ``root`` that still runs."""
    if not Path("/proc/self/environ").exists():
        return []
    found = marked_processes(marker, root)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and set(marked_processes(marker, root)) & set(found):
        time.sleep(0.1)
    for pid in marked_processes(marker, root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return [f"{pid} {cmd}" for pid, cmd in sorted(found.items())]


class LabProcesses:
    """Starting a lab's long-running processes and its CLI calls, each in its own process group
    with its own log. Subclasses set ``root``, ``logs``, ``env``, ``procs`` (a list) and
    ``_cli_calls`` (0), and define ``diagnostics()`` (what to show when something fails)."""

    root: Path
    logs: Path
    env: dict[str, str]
    procs: list[Proc]
    _cli_calls: int

    def diagnostics(self) -> str:  # pragma: no cover - overridden
        return ""

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def spawn(self, name: str, args: list[str], *, cwd: Path | None = None) -> Proc:
        log = self._log(name)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                args,
                cwd=cwd or self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def cli(
        self, args: list[str], *, cwd: Path | None = None, timeout_s: float = 120.0, check=True
    ) -> subprocess.CompletedProcess:
        """Run a CLI (in its own process group, killed on timeout); output in its own log."""
        self._cli_calls += 1
        words = [Path(args[0]).name, *(a for a in args[1:3] if not a.startswith("-"))]
        log = self._log(f"cli-{self._cli_calls:02d}-{'-'.join(words)}")
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=cwd or self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            try:
                _, err = popen.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                kill_group(popen, grace_s=5.0)
                raise LabError(
                    f"{' '.join(args)} ran over {timeout_s:.0f}s\n{self.diagnostics()}"
                ) from None
        done = subprocess.CompletedProcess(
            args, popen.returncode, log.read_text(errors="replace"), err.decode(errors="replace")
        )
        with open(log, "a") as out:
            out.write(done.stderr)
        if check and done.returncode != 0:
            raise LabError(
                f"{' '.join(args)} exited {done.returncode}:\n{tail(log)}\n{self.diagnostics()}"
            )
        return done
