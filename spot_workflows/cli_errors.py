"""How the ``spot-workflows`` commands report user errors: one line on stderr, ``error: ...``,
exit 2 for a usage error (a bad value, a path without a ledger) and 1 for a runtime one; never a
traceback. Also the checks of output paths done before any work, and the stdout console."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from spot_workflows.errors import (
    ConfigError,
    LedgerError,
    SpotWorkflowsError,
    StepInterruptedError,
)

console = Console(stderr=True)
OFF_TERMINAL_WIDTH = 200
"""Width of tables written to a pipe or a file (rich would use 80 and cut the numbers)."""


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit: ``code`` 2 for a usage error, 1 for a runtime one."""
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def exit_code(exc: SpotWorkflowsError) -> int:
    """2 when the user's input is at fault (a setting, a path without a ledger), else 1."""
    return 2 if isinstance(exc, (ConfigError, LedgerError)) else 1


def os_message(exc: OSError) -> str:
    """``<path>: <reason>`` for an OSError, without the errno noise."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where else reason


def stdout_console() -> Console:
    """The console for tables on stdout: the terminal's width, or a wide one off a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=OFF_TERMINAL_WIDTH)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineErrors(click.Group):
    """Every user error, from click or from spot-workflows, is one line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS as exc:  # a bare group: its help, as click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            fail(f"{exc.format_message()}{where}", exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            fail("aborted", 1)
        except StepInterruptedError as exc:
            fail(str(exc), 130)
        except SpotWorkflowsError as exc:
            fail(str(exc), exit_code(exc))
        except OSError as exc:
            fail(os_message(exc), 1)
        sys.exit(rv if isinstance(rv, int) else 0)


def check_workdir(workdir: Path) -> Path:
    """The demo's directory must be a directory we can create and write, checked up front."""
    path = workdir.expanduser()
    if path.exists() and not path.is_dir():
        fail(f"--workdir {workdir} is a file, not a directory: pass a directory (made if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--workdir {workdir} cannot be created: {exc.strerror or exc}")
    if not os.access(path, os.W_OK | os.X_OK):
        fail(f"--workdir {workdir} is not writable: pass a directory you can write to")
    return path


def check_output_file(path: Path, option: str) -> None:
    """Fail before any work when ``path`` cannot be written as a file."""
    if path.is_dir():
        fail(f"{option} {path} is a directory: pass a file name, e.g. {path / 'report.html'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        fail(f"{option} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        fail(f"{option} {path}: not writable; pass a path you can write to")


def guard(fn):
    """Run ``fn``; an interrupt exits 130, a package error or an OSError is one line."""
    try:
        return fn()
    except StepInterruptedError as exc:  # Ctrl-C / SIGTERM: the attempt was stopped, resumable
        console.print(f"[yellow]{exc}[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except SpotWorkflowsError as exc:
        fail(str(exc), exit_code(exc))
    except OSError as exc:
        fail(os_message(exc), 1)
