"""Every retry loop in the package goes through spot_workflows/retrying.py (tenacity).

Checked on the source (ast, nothing imported): outside retrying.py no module imports tenacity,
and no loop is a hand-written retry loop, i.e. a loop that sleeps and

- computes an exponential backoff (``**`` or ``<<``), or
- sleeps in an ``except`` handler (retry after an error), or
- is ``for ... in range(...)`` around a ``try`` (a bounded number of tries).

Polling loops (the runner waiting for a job, a trigger's poll, a worker waiting for a lease)
sleep between *successful* checks and are not retries; the few loops that look like retries but
are not are listed in ALLOWED, with the reason.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "spot_workflows"
HELPER = PKG / "retrying.py"

ALLOWED: dict[tuple[str, str], str] = {
    # (path relative to spot_workflows/, enclosing function): why this loop is not a retry loop
    ("backends/local/client.py", "_flock"): (
        "waits for a file lock another process holds (a non-blocking flock polled every 50 ms "
        "until a deadline): a wait for a holder to let go, not a retry of a failed call"
    ),
}


def _is_sleep(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name.lstrip("_").endswith("sleep")


def _walk_loop(loop: ast.AST):
    """Nodes inside ``loop``, not descending into nested functions (their loops are their own)."""
    todo = list(ast.iter_child_nodes(loop))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def retry_loop_reason(loop: ast.For | ast.AsyncFor | ast.While) -> str | None:
    """Why ``loop`` is a hand-written retry loop, or None."""
    nodes = list(_walk_loop(loop))
    if not any(_is_sleep(n) for n in nodes):
        return None
    if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow | ast.LShift) for n in nodes):
        return "sleeps with an exponential backoff"
    for handler in (n for n in nodes if isinstance(n, ast.ExceptHandler)):
        if any(_is_sleep(n) for body in handler.body for n in [body, *ast.walk(body)]):
            return "sleeps after catching an error"
    ranged = (
        isinstance(loop, ast.For | ast.AsyncFor)
        and isinstance(loop.iter, ast.Call)
        and isinstance(loop.iter.func, ast.Name)
        and loop.iter.func.id == "range"
    )
    if ranged and any(isinstance(n, ast.Try) for n in nodes):
        return "tries a bounded number of times (for ... in range) with a sleep"
    return None


def problems_in(source: str, rel: str) -> list[str]:
    tree = ast.parse(source, filename=rel)
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n == "tenacity" or n.startswith("tenacity.") for n in names):
            found.append(f"{rel}:{node.lineno}: imports tenacity (use spot_workflows.retrying)")
    for func in [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)),
    ]:
        fname = getattr(func, "name", "<module>")
        for loop in _loops_of(func.body):
            why = retry_loop_reason(loop)
            if why and (rel, fname) not in ALLOWED:
                found.append(
                    f"{rel}:{loop.lineno}: a hand-written retry loop in {fname}() ({why}); "
                    "use spot_workflows.retrying (Backoff + retrying/async_retrying)"
                )
    return found


def _loops_of(body: list[ast.stmt]):
    """Loops in a function body (nested loops included), not inside nested functions."""
    todo = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(node, ast.For | ast.AsyncFor | ast.While):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def test_no_hand_written_retry_loops_outside_the_helper():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path == HELPER:
            continue
        found += problems_in(path.read_text(), str(path.relative_to(PKG)))
    assert not found, "\n".join(found)


def test_every_allowed_loop_still_exists():
    """An allow-list entry whose function is gone is stale: remove it."""
    for rel, fname in ALLOWED:
        tree = ast.parse((PKG / rel).read_text())
        names = {
            n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert fname in names, f"ALLOWED names {rel}:{fname}(), which no longer exists"


# -- the check itself: it flags the loops this package used to have, not polling loops -----------

RETRY_LOOPS = {
    "counted from zero, jittered": """
        def call(self, fn):
            for n in range(self.attempts):
                try:
                    return fn()
                except OSError:
                    if n + 1 >= self.attempts:
                        raise
                    self.sleep(self.delay(n))
    """,
    "exponential, counted from one": """
        def call(fn, tries):
            for attempt in range(1, tries + 1):
                try:
                    return fn()
                except TRANSIENT:
                    sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
    """,
    "consecutive failures in a poll loop": """
        async def wait(self):
            failures = 0
            while True:
                try:
                    seen = await asyncio.to_thread(self.describe)
                except Exception:
                    failures += 1
                    if failures >= 5:
                        return None
                    await asyncio.sleep(self.poll_interval)
                    continue
                failures = 0
                await asyncio.sleep(self.poll_interval)
    """,
    "a while loop doubling its wait": """
        def get(url):
            delay = 0.1
            while True:
                resp = fetch(url)
                if resp.ok:
                    return resp
                time.sleep(delay)
                delay = min(5.0, delay * 2 ** 1)
    """,
    "tenacity outside the helper": """
        import tenacity
    """,
}

POLLING_LOOPS = {
    "waiting for a job": """
        def wait(self, job):
            while True:
                state = self.backend.describe([job])[job]
                if state.done:
                    return state
                self.sleep(self.poll_interval)
    """,
    "a trigger's poll": """
        async def run(self):
            while True:
                payloads = await asyncio.to_thread(self.watch.check)
                for p in payloads:
                    yield p
                await asyncio.sleep(self.poll_interval)
    """,
    "a loop using the helper": """
        def call(self, fn):
            for attempt in retrying(self.backoff, transient, what="x"):
                with attempt:
                    return fn()
    """,
}


@pytest.mark.parametrize("name", RETRY_LOOPS)
def test_the_check_flags_hand_written_retry_loops(name):
    found = problems_in(textwrap.dedent(RETRY_LOOPS[name]), "example.py")
    assert found and all(p.startswith("example.py:") for p in found), found


@pytest.mark.parametrize("name", POLLING_LOOPS)
def test_the_check_leaves_polling_loops_alone(name):
    assert problems_in(textwrap.dedent(POLLING_LOOPS[name]), "example.py") == []
