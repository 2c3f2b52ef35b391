"""Every shell command and Python snippet in README.md and docs/*.md runs, or says why not.

Fenced ``bash``/``sh``/``shell``/``console`` blocks run through bash (``set -eo pipefail``) with
``.venv/bin`` first on PATH, in a scratch directory that links the checkout's top-level entries (so
``.venv/bin/...``, ``dags/``, ``flows/`` resolve and nothing is written into the tree); in a
``console`` block only the ``$ `` lines are commands. ``python`` blocks run in a subprocess of the
venv's interpreter, in an empty scratch directory. Both get the worker contract's
``SPOT_CHECKPOINT_URI`` (a scratch ``file://`` URI) and throwaway ``AIRFLOW_HOME``, ``PREFECT_HOME``
and local spot cloud directories. Each has a bounded timeout.

A snippet that cannot run here is marked in the Markdown, on the line right before its fence:

    <!-- snippet: skip (needs AWS credentials) -->     never run; the reason is required
    <!-- snippet: compile -->                          Python fragments: only compiled
    <!-- snippet: compile (needs AWS credentials) -->  the same, with the reason it cannot run

``python -m pytest tests/docs -s -k skipped`` lists the skipped snippets with their reasons.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHON_LANGS = {"python", "py", "python3"}
MARKS = {"run", "skip", "compile"}
TIMEOUT_S = 60

_MARK = re.compile(r"^\s*<!--\s*snippet:\s*(?P<mark>[a-z]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


class SnippetSyntaxError(ValueError):
    """A malformed marker or fence; the message starts with ``file:line``."""


@dataclass(frozen=True)
class Snippet:
    path: str
    line: int  # 1-based line of the opening fence
    lang: str  # "shell" or "python"
    code: str
    mark: str = "run"  # "run", "skip" or "compile"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _console_commands(body: list[str]) -> str:
    """The ``$ `` lines of a console block (with their ``\\`` continuations); else the whole block."""
    if not any(line.lstrip().startswith("$ ") for line in body):
        return "\n".join(body)
    out: list[str] = []
    continuing = False
    for line in body:
        stripped = line.lstrip()
        if stripped.startswith("$ "):
            out.append(stripped[2:])
        elif continuing:
            out.append(line)
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(out)


def extract(text: str, path: str) -> list[Snippet]:
    """The shell and Python snippets of one Markdown file, with their markers.

    Raises :class:`SnippetSyntaxError` for a marker that is malformed, lacks a skip reason or is not
    followed by a shell/Python fence, and for an unterminated fence.
    """
    lines = text.splitlines()
    snippets: list[Snippet] = []
    pending: tuple[str, str, int] | None = None  # mark, reason, line of the marker
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("<!--") and "snippet:" in line:
            found = _MARK.match(line)
            if found is None or found["mark"] not in MARKS:
                raise SnippetSyntaxError(
                    f"{path}:{i + 1}: bad snippet marker {line.strip()!r}; write "
                    "<!-- snippet: skip (reason) --> or <!-- snippet: compile -->"
                )
            reason = (found["reason"] or "").strip()
            if found["mark"] == "skip" and not reason:
                raise SnippetSyntaxError(
                    f"{path}:{i + 1}: a skipped snippet needs a reason: "
                    "<!-- snippet: skip (needs AWS credentials) -->"
                )
            pending = (found["mark"], reason, i + 1)
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and pending is not None:
                raise SnippetSyntaxError(
                    f"{path}:{pending[2]}: snippet marker is not right before a code fence"
                )
            i += 1
            continue
        char, width, indent = fence["fence"][0], len(fence["fence"]), len(fence["indent"])
        close = next(
            (
                j
                for j in range(i + 1, len(lines))
                if re.match(rf"^\s*{re.escape(char)}{{{width},}}\s*$", lines[j])
            ),
            None,
        )
        if close is None:
            raise SnippetSyntaxError(f"{path}:{i + 1}: code fence is never closed")
        body = [b[indent:] if b[:indent].strip() == "" else b for b in lines[i + 1 : close]]
        info = fence["info"].lower().strip("{}.")
        mark, reason = (pending[0], pending[1]) if pending else ("run", "")
        if info in SHELL_LANGS:
            code = _console_commands(body) if info == "console" else "\n".join(body)
            snippets.append(Snippet(path, i + 1, "shell", code, mark, reason))
        elif info in PYTHON_LANGS:
            snippets.append(Snippet(path, i + 1, "python", "\n".join(body), mark, reason))
        elif pending is not None:
            raise SnippetSyntaxError(
                f"{path}:{pending[2]}: snippet marker before a {info or 'plain'} fence; markers "
                "apply only to bash/sh/shell/console/python fences"
            )
        if mark == "compile" and info not in PYTHON_LANGS:
            raise SnippetSyntaxError(f"{path}:{pending[2]}: 'compile' applies to python fences")
        pending = None
        i = close + 1
    if pending is not None:
        raise SnippetSyntaxError(f"{path}:{pending[2]}: snippet marker at the end of the file")
    return snippets


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def collect() -> tuple[list[Snippet], list[str]]:
    snippets: list[Snippet] = []
    errors: list[str] = []
    for file in doc_files():
        try:
            snippets += extract(file.read_text(), str(file.relative_to(ROOT)))
        except SnippetSyntaxError as exc:
            errors.append(str(exc))
    return snippets, errors


def _env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env.setdefault("SPOT_WORKFLOWS_LOCAL_DIR", str(scratch / "local-cloud"))
    env["SPOT_CHECKPOINT_URI"] = f"file://{scratch / 'checkpoints'}"
    env["PREFECT_HOME"] = str(scratch / "prefect-home")
    env["AIRFLOW_HOME"] = str(scratch / "airflow-home")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env.pop("PYTHONPATH", None)
    return env


def _link_checkout(scratch: Path, root: Path) -> None:
    """Link the checkout's top-level entries into ``scratch`` (relative paths in commands work)."""
    for entry in root.iterdir():
        if entry.name != ".git" and not (scratch / entry.name).exists():
            (scratch / entry.name).symlink_to(entry)


def run_snippet(snippet: Snippet, scratch: Path, timeout_s: float = TIMEOUT_S) -> str | None:
    """Run (or compile) one snippet; None when it passed, else a message naming ``file:line``."""
    if snippet.mark == "skip":
        return None
    if snippet.lang == "python" and snippet.mark == "compile":
        try:
            compile(snippet.code, snippet.where, "exec")
        except SyntaxError as exc:
            return f"{snippet.where}: python snippet does not compile: {exc}"
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    if snippet.lang == "python":
        script = scratch / "snippet.py"
        script.write_text(snippet.code + "\n")
        argv = [str(VENV_BIN / "python"), str(script)]
    else:
        _link_checkout(scratch, ROOT)
        argv = ["bash", "-c", "set -eo pipefail\n" + snippet.code]
    try:
        proc = subprocess.run(
            argv,
            cwd=scratch,
            env=_env(scratch),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return (
            f"{snippet.where}: {snippet.lang} snippet ran past {timeout_s:g} s; make it quicker "
            "or mark it <!-- snippet: skip (reason) -->"
        )
    if proc.returncode != 0:
        tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-2500:]).strip()
        return (
            f"{snippet.where}: {snippet.lang} snippet exited {proc.returncode}:\n"
            f"{textwrap.indent(snippet.code, '    ')}\n--- output ---\n{tail}"
        )
    return None


SNIPPETS, ERRORS = collect()


def test_markers_are_well_formed():
    assert not ERRORS, "\n".join(ERRORS)
    assert len(SNIPPETS) > 20, "the extractor found too few snippets in README.md and docs/"


def test_skipped_snippets_all_give_a_reason():
    skipped = [s for s in SNIPPETS if s.mark == "skip"]
    print(f"\n{len(skipped)} snippets skipped:")
    for s in skipped:
        print(f"  {s.where} ({s.lang}): {s.reason}")
        assert s.reason, s.where
    compiled = [s for s in SNIPPETS if s.mark == "compile"]
    print(f"{len(compiled)} python snippets only compiled:")
    for s in compiled:
        print(f"  {s.where}: {s.reason or 'a fragment'}")
    # pytest inside pytest recurses; the README's demo runs in tests/e2e/test_demo_cli.py
    for s in SNIPPETS:
        if s.lang == "shell" and s.mark != "skip":
            assert not re.search(r"\bpytest\b|\bspot-workflows demo\b", s.code), (
                f"{s.where}: runs pytest or the full demo; mark it skip"
            )


@pytest.mark.parametrize(
    "snippet",
    [s for s in SNIPPETS if s.mark != "skip"],
    ids=lambda s: f"{s.where}-{s.lang}" + ("-compile" if s.mark == "compile" else ""),
)
def test_snippet(snippet: Snippet, tmp_path: Path):
    problem = run_snippet(snippet, tmp_path / "scratch")
    assert problem is None, problem


# -- the extractor itself ------------------------------------------------------------------------

SAMPLE = """\
# Title

```bash
echo one \\
  two
```

<!-- snippet: skip (needs AWS credentials) -->
```sh
aws s3 ls
```

```json
{"not": "run"}
```

<!-- snippet: compile -->
```python
def body():
    return undefined_name
```

```console
$ echo hi
hi
$ true
```

```python
raise SystemExit(3)
```
"""


def test_extract_finds_snippets_marks_and_lines():
    found = extract(SAMPLE, "sample.md")
    assert [(s.line, s.lang, s.mark) for s in found] == [
        (3, "shell", "run"),
        (9, "shell", "skip"),
        (18, "python", "compile"),
        (23, "shell", "run"),
        (29, "python", "run"),
    ]
    assert found[0].code == "echo one \\\n  two"
    assert found[1].reason == "needs AWS credentials"
    assert found[3].code == "echo hi\ntrue"  # output lines are not commands
    prose = "Mark it with `<!-- snippet: skip (reason) -->` on its own line.\n"
    assert extract(prose, "prose.md") == []  # a marker quoted in prose is not a marker


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "<!-- snippet: skip -->\n```bash\nls\n```\n",
            "sample.md:1: a skipped snippet needs a reason",
        ),
        ("<!-- snippet: maybe -->\n```bash\nls\n```\n", "sample.md:1: bad snippet marker"),
        (
            "<!-- snippet: skip (x) -->\ntext\n```bash\nls\n```\n",
            "sample.md:1: snippet marker is not",
        ),
        (
            "<!-- snippet: skip (x) -->\n```json\n{}\n```\n",
            "sample.md:1: snippet marker before a json",
        ),
        ("text\n```python\nx = 1\n", "sample.md:2: code fence is never closed"),
    ],
)
def test_extract_rejects_bad_markers(text, message):
    with pytest.raises(SnippetSyntaxError, match=re.escape(message)):
        extract(text, "sample.md")


def test_failing_snippets_are_reported_with_file_and_line(tmp_path):
    found = {s.line: s for s in extract(SAMPLE, "sample.md")}
    problem = run_snippet(found[29], tmp_path / "py")
    assert problem is not None and problem.startswith("sample.md:29: python snippet exited 3")
    failing_shell = Snippet("sample.md", 7, "shell", "true\nfalse\necho not reached")
    problem = run_snippet(failing_shell, tmp_path / "sh")
    assert problem is not None and problem.startswith("sample.md:7: shell snippet exited 1")
    assert "not reached" not in problem.split("--- output ---")[1]
    slow = Snippet("sample.md", 9, "python", "import time\ntime.sleep(30)")
    problem = run_snippet(slow, tmp_path / "slow", timeout_s=1)
    assert problem is not None and "sample.md:9: python snippet ran past 1 s" in problem
    broken = Snippet("sample.md", 11, "python", "def f(:\n", mark="compile")
    assert run_snippet(broken, tmp_path / "c").startswith("sample.md:11: python snippet does not")
    assert run_snippet(found[18], tmp_path / "ok") is None  # compiled only: never executed
    assert run_snippet(found[3], tmp_path / "sh-ok") is None
    assert run_snippet(found[9], tmp_path / "skip") is None  # skipped: `aws` is never called
