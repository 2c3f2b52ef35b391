"""Checkpointer: cadence, resume, stop requests and emergency saves (real files, real signals)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spot_workflows.core.outcomes import (
    RESERVED_EXIT_CODE,
    Capacity,
    NoticeKind,
    TerminationNotice,
)
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer, EmergencySaveReport
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"file://{tmp_path}/ckpt")


def make(store: CheckpointStore, **kw) -> Checkpointer:
    kw.setdefault("handle_signals", False)
    return Checkpointer(store, **kw)


def test_cadence_by_steps(store: CheckpointStore) -> None:
    ck = make(store, every_steps=10)
    assert [s for s in range(0, 25) if ck.should_save(s)][:1] == [10]
    ck.save(10, {"w": b"10"})
    assert not ck.should_save(19)
    assert ck.should_save(20)


def test_cadence_by_seconds_with_injected_clock(store: CheckpointStore) -> None:
    clock = FakeClock()
    ck = make(store, every_seconds=60, clock=clock)
    assert not ck.should_save(1)
    clock.now += 59.9
    assert not ck.should_save(2)
    clock.now += 0.1
    assert ck.should_save(3)
    ck.save(3, {"w": b"3"})
    assert not ck.should_save(4)
    ck.set_interval(5)
    clock.now += 5
    assert ck.should_save(5)
    ck.set_interval(None)
    assert not ck.should_save(6)
    with pytest.raises(ConfigError, match="interval"):
        ck.set_interval(0)


def test_no_cadence_never_asks_to_save(store: CheckpointStore) -> None:
    ck = make(store)
    assert not any(ck.should_save(s) for s in range(1000))


def test_restore_returns_latest_and_resets_step_cadence(store: CheckpointStore) -> None:
    ck = make(store, every_steps=100)
    assert ck.restore() is None
    ck.save(100, {"w": b"a"}, progress=0.1)
    ck.save(200, {"w": b"b"}, progress=0.2)
    again = make(store, every_steps=100, attempt=2)
    restored = again.restore()
    assert restored is not None and restored.step == 200 and restored.progress == 0.2
    assert restored.read("w") == b"b"
    assert not again.should_save(250) and again.should_save(300)


def test_metadata_records_attempt_capacity_and_emergency(store: CheckpointStore) -> None:
    ck = make(store, attempt=3, capacity="SPOT", step_key="train")
    m = ck.save(1, {"w": b"x"}, metadata={"loss": 0.5})
    assert m.metadata == {
        "loss": 0.5,
        "attempt": 3,
        "capacity": "SPOT",
        "step_key": "train",
        "emergency": False,
    }
    report = ck.emergency_save(2, {"w": b"y"})
    assert report.ok and report.deadline is None and report.met_deadline is None
    assert store.latest().metadata["emergency"] is True
    with pytest.raises(ConfigError, match="reserved"):
        ck.save(3, {"w": b"z"}, metadata={"attempt": 9})


def test_request_stop_and_deadline_met(store: CheckpointStore) -> None:
    wall = FakeClock(1_700_000_000.0)
    ck = make(store, wall_clock=wall)
    assert not ck.stop_requested
    deadline = datetime.fromtimestamp(wall.now + 120, tz=UTC)
    ck.request_stop(
        TerminationNotice(kind=NoticeKind.INTERRUPTION, source="aws", deadline=deadline)
    )
    assert ck.stop_requested
    report = ck.emergency_save(5, {"w": b"x"})
    assert report.deadline == pytest.approx(wall.now + 120)
    assert report.met_deadline is True and report.error is None
    assert store.read("emergency-5.json") is None  # only written when something went wrong


def test_emergency_save_past_deadline_is_reported(
    store: CheckpointStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notice = TerminationNotice(
        kind=NoticeKind.INTERRUPTION,
        source="local",
        deadline=datetime.fromtimestamp(1_700_000_000.0, tz=UTC),
    )
    notice_file = tmp_path / "notice.json"
    notice_file.write_text(notice.model_dump_json())  # what spot-run writes before SIGTERM
    ck = make(store, notice_file=str(notice_file), wall_clock=FakeClock(1_700_000_010.0))
    with caplog.at_level(logging.ERROR, logger="spot_workflows.checkpoint"):
        report = ck.emergency_save(42, {"w": b"late"})
    assert report.met_deadline is False and report.error is None and not report.ok
    assert report.deadline == 1_700_000_000.0
    assert store.latest().step == 42  # the save itself still happened
    written = EmergencySaveReport.model_validate_json(store.read("emergency-42.json"))
    assert written == report
    assert "emergency checkpoint step 42" in caplog.text


def test_emergency_save_failure_is_reported_not_raised(store: CheckpointStore) -> None:
    ck = make(store)
    ck.save(10, {"w": b"x"})
    report = ck.emergency_save(3, {"w": b"older step"})  # refused: older than step 10
    assert report.error is not None and "newer checkpoint" in report.error
    assert json.loads(store.read("emergency-3.json"))["error"] == report.error
    assert store.latest().step == 10


def test_unreadable_notice_file_means_no_deadline(store: CheckpointStore, tmp_path: Path) -> None:
    bad = tmp_path / "notice.json"
    bad.write_text("{garbage")
    ck = make(store, notice_file=str(bad))
    assert ck.notice is None
    assert make(store, notice_file=str(tmp_path / "absent.json")).notice is None
    assert ck.emergency_save(1, {"w": b"x"}).met_deadline is None


def test_sigterm_sets_stop_requested_and_close_restores(store: CheckpointStore) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Checkpointer(store) as ck:
        assert signal.getsignal(signal.SIGTERM) != before
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):  # the handler runs at the next bytecode boundary
            if ck.stop_requested:
                break
            time.sleep(0.005)
        assert ck.stop_requested
    assert signal.getsignal(signal.SIGTERM) == before


def test_from_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SPOT_CHECKPOINT_URI"):
        Checkpointer.from_env(environ={"SPOT_ATTEMPT": "1"})
    env = {
        "SPOT_CHECKPOINT_URI": f"file://{tmp_path}/c",
        "SPOT_STEP_KEY": "train-1",
        "SPOT_ATTEMPT": "4",
        "SPOT_CAPACITY": "ON_DEMAND",
        "SPOT_NOTICE_SOURCE": "local",
        "SPOT_NOTICE_FILE": str(tmp_path / "n.json"),
    }
    ck = Checkpointer.from_env(environ=env, keep_last=1, handle_signals=False, every_steps=5)
    assert ck.attempt == 4 and ck.capacity is Capacity.ON_DEMAND and ck.step_key == "train-1"
    assert ck.notice_file == str(tmp_path / "n.json") and ck.store.keep_last == 1
    with pytest.raises(ConfigError, match="SPOT_ATTEMPT"):
        Checkpointer.from_env(environ={**env, "SPOT_ATTEMPT": "two"}, handle_signals=False)
    with pytest.raises(ConfigError, match="SPOT_CAPACITY"):
        Checkpointer.from_env(environ={**env, "SPOT_CAPACITY": "spot-ish"}, handle_signals=False)


def test_reserved_exit_code(store: CheckpointStore) -> None:
    with pytest.raises(SystemExit) as exc:
        make(store).exit_preempted()
    assert exc.value.code == RESERVED_EXIT_CODE == 75
