"""The handoff marker (``handoff/<attempt>`` in the step's checkpoint store) and the ownership
rule a worker follows at start, on a real local store and a real ledger."""

from __future__ import annotations

import json
import threading
import time

import pytest

from spot_workflows.core.outcomes import Attempt, AttemptState, Capacity, NoticeKind, Outcome
from spot_workflows.errors import ConfigError
from spot_workflows.ledger import Ledger
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore
from spot_workflows.runtime.store.handoff import (
    await_ownership,
    clear_marker,
    marker_check,
    marker_notice,
    ownership,
    ownership_wait_s,
    read_handoff,
    read_marker,
    write_handoff,
    write_marker,
)
from spot_workflows.runtime.worker.notices import TerminationWatcher


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    return CheckpointStore((tmp_path / "ckpt").as_uri())


def att(n: int, *, live: bool = True, stopping=None, handoff=False, cap=Capacity.SPOT) -> Attempt:
    return Attempt(
        number=n,
        capacity=cap,
        job_name=f"s-a{n}",
        backend="local",
        submitted_at=0.0,
        state=AttemptState.RUNNING if live else AttemptState.DONE,
        outcome=None if live else Outcome.STOPPED,
        stopping=stopping,
        handoff=handoff,
    )


def add_live(ledger: Ledger, capacity: Capacity, placement: str) -> Attempt:
    """Record a live SPOT attempt beside the live one (a racer or a probe), as the runner does."""
    return ledger.begin(
        capacity=capacity,
        backend="local",
        now=time.time(),
        placement=placement,
        beside_live=True,
    )


def test_write_read_clear_round_trip_atomically(store, tmp_path):
    assert read_marker(store, 3) is None
    doc = write_marker(store, 3, reason="back to spot", now=100.0, deadline=130.0)
    assert doc == {"attempt": 3, "reason": "back to spot", "at": 100.0, "deadline": 130.0}
    assert read_marker(store, 3) == doc
    assert read_marker(store, 2) is None  # one marker per attempt
    folder = tmp_path / "ckpt" / "handoff"
    assert [p.name for p in folder.iterdir()] == ["3"]  # no temp file left behind
    assert json.loads((folder / "3").read_text()) == doc
    clear_marker(store, 3)
    clear_marker(store, 3)  # nothing to clear: no error
    assert read_marker(store, 3) is None


def test_the_runner_side_names_write_the_same_marker(store):
    write_handoff(store, 2, reason="switch", now=5.0)  # what the runner calls
    assert (
        read_marker(store, 2)
        == read_handoff(store, 2)
        == {"attempt": 2, "reason": "switch", "at": 5.0}
    )


def test_a_marker_that_is_not_json_is_still_a_handoff(store):
    store.write_atomic("handoff/4", b"\x00garbage")
    assert read_marker(store, 4) == {"attempt": 4}
    notice = marker_check(store, 4, step_key="k")()
    assert notice is not None and notice.kind is NoticeKind.HANDOFF and notice.deadline is None
    assert notice.step_key == "k" and notice.detail == {"attempt": 4, "reason": "handoff"}


def test_the_notice_carries_the_deadline():
    notice = marker_notice({"reason": "r", "deadline": 1_700_000_000.0}, attempt=2)
    assert notice.deadline is not None and notice.deadline.timestamp() == 1_700_000_000.0
    assert notice.source == "handoff"


@pytest.mark.parametrize("bad", [0, -1, True, "1"])
def test_a_bad_attempt_number_is_refused(store, bad):
    with pytest.raises(ConfigError, match="attempt must be an integer >= 1"):
        write_marker(store, bad)


@pytest.mark.parametrize(
    ("attempts", "me", "verdict", "waiting"),
    [
        (None, 1, "own", ()),  # no ledger yet
        ([att(1)], 1, "own", ()),  # one live attempt: every step before spot pools
        ([att(1, live=False), att(2)], 2, "own", ()),
        ([att(1), att(2)], 2, "wait", (1,)),  # two live attempts: wait for the runner
        ([att(1), att(2)], 1, "wait", (2,)),
        ([att(1, stopping=Outcome.RACED), att(2)], 2, "own", ()),  # the loser is going away
        ([att(1), att(2, stopping=Outcome.RACED)], 2, "raced", ()),
        ([att(1, stopping=Outcome.STOPPED, handoff=True), att(2)], 2, "wait", (1,)),
        ([att(1, live=False, handoff=True), att(2)], 2, "own", ()),  # handed off: go
        ([att(1), att(2), att(3)], 3, "wait", (1, 2)),
        ([att(1)], 5, "wait", (1,)),  # not in the ledger (yet): someone else is live
        # a spot probe kept beside an on-demand attempt never holds up the on-demand worker...
        ([att(1, cap=Capacity.ON_DEMAND), att(2)], 1, "own", ()),
        # ...but the probe's worker waits for the on-demand one (until it hands over and ends)
        ([att(1, cap=Capacity.ON_DEMAND), att(2)], 2, "wait", (1,)),
        # an earlier spot attempt beside an on-demand one is not its probe
        ([att(1), att(2, cap=Capacity.ON_DEMAND)], 2, "wait", (1,)),
    ],
)
def test_ownership_table(attempts, me, verdict, waiting):
    got = ownership(attempts, me)
    assert (got.verdict, got.waiting_for) == (verdict, waiting)


def test_ownership_wait_comes_from_the_environment():
    assert ownership_wait_s({}) == 900.0
    assert ownership_wait_s({"SPOT_OWNERSHIP_WAIT_S": "2.5"}) == 2.5
    for bad in ("-1", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match="SPOT_OWNERSHIP_WAIT_S must be a number"):
            ownership_wait_s({"SPOT_OWNERSHIP_WAIT_S": bad})


def test_await_ownership_waits_until_the_handoff_attempt_is_done(store):
    ledger = Ledger.open(store, "s")
    first = ledger.begin(capacity=Capacity.ON_DEMAND, backend="local", now=time.time())
    second = add_live(ledger, Capacity.SPOT, "b")
    ledger.update(first, stopping=Outcome.STOPPED, handoff=True)
    said: list[str] = []
    timer = threading.Timer(0.5, lambda: ledger.finish(first, Outcome.STOPPED, now=1, reason="x"))
    timer.start()
    started = time.monotonic()
    got = await_ownership(store, second.number, timeout_s=10, poll_s=0.05, say=said.append)
    assert got.verdict == "own" and 0.4 < time.monotonic() - started < 5
    assert said == [f"attempt {second.number} does not own the step yet: waiting for attempt(s) 1"]


def test_await_ownership_gives_up_after_the_timeout(store):
    ledger = Ledger.open(store, "s")
    ledger.begin(capacity=Capacity.ON_DEMAND, backend="local", now=time.time())
    second = add_live(ledger, Capacity.SPOT, "b")
    started = time.monotonic()
    got = await_ownership(store, second.number, timeout_s=0.3, poll_s=0.05, say=lambda _: None)
    assert got.verdict == "wait" and got.waiting_for == (1,)
    assert 0.3 <= time.monotonic() - started < 2


def test_an_unreadable_ledger_is_not_waited_on(store):
    store.write_atomic("ledger.json", b"{not json")
    said: list[str] = []
    assert await_ownership(store, 1, timeout_s=5, say=said.append).verdict == "own"
    assert "cannot read the step's ledger" in said[0]


def test_the_notice_watcher_delivers_the_marker_as_a_sticky_handoff(store):
    seen = []
    watcher = TerminationWatcher(
        source="aws",
        aws_endpoint="http://127.0.0.1:9",  # nothing answers: the marker still gets through
        timeout=0.2,
        checks=[marker_check(store, 1)],
        on_notice=seen.append,
    )
    assert watcher.poll_once() == []
    assert watcher.notice is None
    write_marker(store, 1, reason="back to spot")
    (found,) = watcher.poll_once()
    assert found.kind is NoticeKind.HANDOFF and watcher.notice == found
    watcher.poll_once()
    assert seen == [found]  # delivered once


def test_a_checkpointer_without_spot_run_stops_on_the_marker(store):
    ckpt = Checkpointer(store, attempt=1, handle_signals=False, own_step=True, handoff_poll_s=0.05)
    try:
        assert ckpt.restore() is None
        assert not ckpt.stop_requested
        write_marker(store, 1, reason="back to spot")
        deadline = time.monotonic() + 5
        while not ckpt.stop_requested and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ckpt.stop_requested and ckpt.notice is not None
        assert ckpt.notice.kind is NoticeKind.HANDOFF
    finally:
        ckpt.close()


def test_a_checkpointer_of_a_raced_attempt_exits_0_before_restoring(store):
    ledger = Ledger.open(store, "s")
    ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
    second = add_live(ledger, Capacity.SPOT, "b")
    ledger.update(second, stopping=Outcome.RACED)
    ckpt = Checkpointer(store, attempt=second.number, handle_signals=False, own_step=True)
    with pytest.raises(SystemExit) as exc:
        ckpt.restore()
    assert exc.value.code == 0
    ckpt.close()


def test_a_checkpointer_under_spot_run_leaves_ownership_to_it(store, monkeypatch):
    monkeypatch.setenv("SPOT_RUN_WRAPPED", "1")
    ledger = Ledger.open(store, "s")
    ledger.begin(capacity=Capacity.SPOT, backend="local", now=time.time())
    second = add_live(ledger, Capacity.SPOT, "b")
    ledger.update(second, stopping=Outcome.RACED)
    ckpt = Checkpointer(store, attempt=second.number, handle_signals=False)
    assert ckpt.own_step is False
    assert ckpt.restore() is None  # no wait, no exit: spot-run did that part
    ckpt.close()
