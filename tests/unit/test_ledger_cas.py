"""The attempt ledger under concurrent writers: compare-and-swap, never a blind overwrite.

Several ``Ledger`` objects on one store stand for several runners of one step (each holds its own,
possibly stale, copy). Real stores: a local directory and fsspec's memory filesystem.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spot_workflows.core.outcomes import AttemptState, Capacity, Observation, Outcome
from spot_workflows.errors import LedgerError
from spot_workflows.ledger import AttemptIsLive, Ledger, LedgerMoved
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

_memory_ids = itertools.count()


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path) -> CheckpointStore:
    if request.param == "file":
        return CheckpointStore((tmp_path / "ckpt").as_uri())
    return CheckpointStore(f"memory://ledger-cas-{next(_memory_ids)}")


def running(job_id: str) -> Observation:
    return Observation(job_id=job_id, state=AttemptState.RUNNING, started_at=1.0)


def done(job_id: str, outcome: Outcome) -> Observation:
    return Observation(job_id=job_id, state=AttemptState.DONE, outcome=outcome, ended_at=2.0)


def test_a_second_runner_cannot_begin_while_the_first_ones_attempt_is_live(store):
    a, b = Ledger.open(store, "s"), Ledger.open(store, "s")  # b's copy is stale from now on
    first = a.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
    assert first.owner == a.owner != b.owner
    with pytest.raises(AttemptIsLive) as live:
        b.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
    assert live.value.attempt.number == 1 and live.value.attempt.owner == a.owner
    assert [x.number for x in Ledger.open(store, "s").attempts] == [1]
    assert b.conflicts == 1  # it lost the race, re-read, and found the live attempt


def test_a_decision_made_on_a_stale_ledger_submits_nothing(store):
    """Runner b decided to submit attempt 1 on an empty ledger; meanwhile a ran attempt 1 to
    success. b's begin must not append attempt 2 after a succeeded step."""
    a, b = Ledger.open(store, "s"), Ledger.open(store, "s")
    seen = len(b.attempts)  # 0: what b's decision was based on
    first = a.set_job_id(a.begin(capacity=Capacity.SPOT, backend="local", now=0.0), "j1")
    a.observe(first, done("j1", Outcome.SUCCEEDED))
    with pytest.raises(LedgerMoved, match="holds 1 attempts, not the 0"):
        b.begin(capacity=Capacity.SPOT, backend="local", now=1.0, after=seen)
    assert [(x.number, x.outcome) for x in Ledger.open(store, "s").attempts] == [
        (1, Outcome.SUCCEEDED)
    ]
    again = b.begin(capacity=Capacity.SPOT, backend="local", now=1.0, after=len(b.attempts))
    assert again.number == 2  # a decision on the current ledger goes through


def test_a_stale_observation_never_brings_a_finished_attempt_back(store):
    a, b = Ledger.open(store, "s"), Ledger.open(store, "s")
    attempt = a.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
    attempt = a.set_job_id(attempt, "j1")
    b.refresh()
    a.observe(attempt, done("j1", Outcome.PREEMPTED))
    stale = b.attempt(1)
    assert stale.live
    after = b.observe(stale, running("j1"))  # b saw it running a moment ago
    assert after.outcome is Outcome.PREEMPTED and not after.live
    assert Ledger.open(store, "s").attempt(1).outcome is Outcome.PREEMPTED


def test_the_first_recorded_end_wins_and_bookkeeping_still_lands(store):
    a, b = Ledger.open(store, "s"), Ledger.open(store, "s")
    attempt = a.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
    b.refresh()
    a.finish(attempt, Outcome.STOPPED, now=5.0, reason="switching to on-demand")
    kept = b.finish(b.attempt(1), Outcome.PREEMPTED, now=6.0, reason="late")
    assert (kept.outcome, kept.reason) == (Outcome.STOPPED, "switching to on-demand")
    b.update(b.attempt(1), last_checkpoint_step=40, state=AttemptState.RUNNING)
    stored = Ledger.open(store, "s").attempt(1)
    assert stored.last_checkpoint_step == 40 and stored.state is AttemptState.DONE


def test_job_ids_and_takeovers_are_decided_once(store):
    a, b, c = (Ledger.open(store, "s") for _ in range(3))
    attempt = a.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
    b.refresh()
    c.refresh()
    taken = b.take_over(b.attempt(1))
    assert taken.owner == b.owner
    assert c.take_over(c.attempt(1)).owner == b.owner  # c based its takeover on a's ownership
    assert a.set_job_id(attempt, "from-a").job_id == "from-a"
    assert b.set_job_id(taken, "from-b").job_id == "from-a"  # the first id recorded stays
    assert b.take_over(b.attempt(1)).owner == b.owner  # a submitted attempt is not taken over


def test_no_write_when_nothing_changed(store):
    ledger = Ledger.open(store, "s")
    attempt = ledger.set_job_id(ledger.begin(capacity=Capacity.SPOT, backend="local", now=0.0), "j")
    attempt = ledger.observe(attempt, running("j"))
    writes = ledger.writes
    for _ in range(5):
        ledger.refresh()
        ledger.observe(ledger.attempt(1), running("j"))
    assert ledger.writes == writes


def test_reopen_turns_an_outside_cancel_into_a_resumable_stop(store):
    ledger = Ledger.open(store, "s")
    with pytest.raises(LedgerError, match="nothing to reopen"):
        ledger.reopen(now=1.0, reason="x")
    attempt = ledger.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
    ledger.finish(attempt, Outcome.CANCELLED, now=1.0, reason="cancelled in the console")
    reopened = ledger.reopen(now=2.0, reason="reopened")
    assert reopened.outcome is Outcome.STOPPED and "cancelled in the console" in reopened.reason
    with pytest.raises(LedgerError, match="STOPPED"):
        ledger.reopen(now=3.0, reason="again")


OPS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["begin", "observe", "finish", "refresh"])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_interleaved_writers_never_lose_an_attempt_or_run_two_at_once(ops):
    """Four runners with stale copies act in any order: every attempt a runner was told it
    recorded is in the ledger, numbers run 1..n, at most one attempt is live, and a finished
    attempt stays finished."""
    store = CheckpointStore(f"memory://ledger-hypo-{next(_memory_ids)}")
    runners = [Ledger.open(store, "s") for _ in range(4)]
    recorded: dict[int, str] = {}  # attempt number -> owner told it recorded it
    ended: dict[int, Outcome] = {}
    for who, op in ops:
        ledger = runners[who]
        if op == "refresh":
            ledger.refresh()
        elif op == "begin":
            try:
                attempt = ledger.begin(capacity=Capacity.SPOT, backend="local", now=0.0)
            except AttemptIsLive:
                continue
            assert attempt.number not in recorded
            recorded[attempt.number] = ledger.owner
        elif ledger.live is not None:
            live = ledger.live
            if op == "observe":
                after = ledger.observe(live, running(f"j{live.number}"))
            else:
                after = ledger.finish(live, Outcome.PREEMPTED, now=1.0, reason="r")
            if not after.live:
                ended.setdefault(after.number, after.outcome)
    final = Ledger.open(store, "s").attempts
    assert [a.number for a in final] == list(range(1, len(final) + 1))
    assert {a.number: a.owner for a in final} == recorded
    assert sum(a.live for a in final) <= 1 and all(not a.live for a in final[:-1])
    for number, outcome in ended.items():
        assert final[number - 1].outcome is outcome
