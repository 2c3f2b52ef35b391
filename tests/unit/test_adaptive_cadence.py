"""Checkpointer(adaptive=True): Young/Daly interval from the measured save cost and the MTBF
observed on the step's own ledger."""

import json

import pytest

from spot_workflows.core.cadence import DEFAULT_MTBF_S, adaptive_interval, daly_interval
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def ledger(store, runs):
    attempts = [
        {
            "number": i + 1,
            "capacity": "SPOT",
            "job_name": f"k-a{i + 1}",
            "job_id": f"j{i}",
            "backend": "local",
            "state": "DONE",
            "outcome": outcome,
            "submitted_at": 0.0,
            "started_at": 0.0,
            "ended_at": seconds,
        }
        for i, (seconds, outcome) in enumerate(runs)
    ]
    store.write_atomic("ledger.json", json.dumps({"step_key": "k", "attempts": attempts}).encode())


def test_mtbf_comes_from_the_ledger_and_the_interval_from_the_measured_save(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}")
    ledger(store, [(1800.0, "PREEMPTED"), (1800.0, "PREEMPTED")])  # 3600 s spot, 2 reclaims
    clock = Clock()
    ckpt = Checkpointer(store, adaptive=True, handle_signals=False, clock=clock)
    assert ckpt.mtbf_s == pytest.approx(1800.0)
    assert ckpt.every_seconds == adaptive_interval(None, 1800.0)  # default before any save

    def slow_save(step, seconds):
        readings = iter([clock.t, clock.t + seconds])  # before and after: the save "takes" that

        ckpt._clock = lambda: next(readings)
        ckpt.save(step, {"s": b"x"})
        clock.t += seconds
        ckpt._clock = clock

    slow_save(1, 20.0)
    assert ckpt.last_save_seconds == pytest.approx(20.0)
    assert ckpt.every_seconds == pytest.approx(daly_interval(20.0, 1800.0))
    slow_save(2, 5.0)  # cheaper saves -> checkpoint more often
    assert ckpt.every_seconds == pytest.approx(daly_interval(5.0, 1800.0))
    assert ckpt.every_seconds < daly_interval(20.0, 1800.0)


def test_without_reclaims_the_prior_is_used(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}")
    ckpt = Checkpointer(store, adaptive=True, handle_signals=False)
    assert ckpt.mtbf_s is None
    ckpt.save(1, {"s": b"x"})
    assert ckpt.every_seconds == adaptive_interval(ckpt.last_save_seconds, DEFAULT_MTBF_S)


def test_adaptive_and_a_fixed_interval_conflict(tmp_path):
    with pytest.raises(ConfigError, match="one or the other"):
        Checkpointer(
            CheckpointStore(f"file://{tmp_path}"),
            adaptive=True,
            every_seconds=60,
            handle_signals=False,
        )
