"""Real worker processes: SIGKILL mid-save never breaks the latest checkpoint; SIGTERM
makes a Checkpointer loop emergency-save the step it was on and exit with the reserved code."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spot_workflows.core.outcomes import RESERVED_EXIT_CODE, NoticeKind, TerminationNotice
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

    store = CheckpointStore(sys.argv[1], keep_last=int(sys.argv[3]))
    weights = Path(sys.argv[2])
    latest = store.latest()
    step = latest.step + 1 if latest else 0
    blob = os.urandom(3 * 1024 * 1024)
    print("ready", flush=True)
    i = 0
    while True:
        head = f"{step}:{i}:".encode()
        files = {"model.bin": head + blob, "optim/state.bin": head + blob[:500_000],
                 "weights.bin": weights}
        store.save(step, files, progress=min(1.0, step / 1000), metadata={"i": i})
        i += 1
        if i % 3:  # every third save re-saves the same step with new content
            step += 1
    """
)

TRAINER = textwrap.dedent(
    """
    import sys, time
    from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer

    ck = Checkpointer.from_env(every_steps=5)
    restored = ck.restore()
    step = restored.step if restored else 0
    while step < 100_000:
        step += 1
        print(f"step {step}", flush=True)
        time.sleep(0.01)  # "training"
        if ck.stop_requested:
            report = ck.emergency_save(step, {"model.bin": f"model@{step}".encode()})
            print(f"emergency {step} {report.model_dump_json()}", flush=True)
            ck.exit_preempted()
        if ck.should_save(step):
            ck.save(step, {"model.bin": f"model@{step}".encode()}, progress=step / 100_000)
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _verify(store: CheckpointStore) -> int:
    latest = store.latest()
    assert latest is not None
    for f in latest.files:
        store.read_file(latest, f.name)  # raises CorruptCheckpointError on any mismatch
    return latest.step


@pytest.mark.parametrize("keep_last", [1, 2])
def test_sigkill_during_saves_never_breaks_latest(tmp_path: Path, keep_last: int) -> None:
    rng = random.Random(20240611 + keep_last)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(6 * 1024 * 1024))
    uri = f"file://{tmp_path}/ckpt"
    store = CheckpointStore(uri)
    previous = -1
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, str(script), uri, str(weights), str(keep_last)],
            stdout=subprocess.PIPE,
            env=_env(),
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.35))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        if previous == -1 and store.latest() is None:
            continue  # killed before its first save completed
        step = _verify(store)
        assert step >= previous  # never goes backwards
        previous = step
    assert previous >= 0, "no save completed: raise the kill delays"


def test_sigterm_makes_the_worker_emergency_save_and_exit_75(tmp_path: Path) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    notice_file = tmp_path / "notice.json"
    uri = f"file://{tmp_path}/ckpt"
    env = _env(
        SPOT_CHECKPOINT_URI=uri,
        SPOT_STEP_KEY="train",
        SPOT_ATTEMPT="2",
        SPOT_CAPACITY="SPOT",
        SPOT_NOTICE_SOURCE="local",
        SPOT_NOTICE_FILE=str(notice_file),
    )
    CheckpointStore(uri).save(40, {"model.bin": b"model@40"})  # an earlier attempt's checkpoint
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.split())
        if seen[-1] == ["step", "53"]:
            # what spot-run does: write the notice, then SIGTERM the child
            deadline = datetime.fromtimestamp(time.time() + 120, tz=UTC)
            notice = TerminationNotice(
                kind=NoticeKind.INTERRUPTION, source="local", deadline=deadline
            )
            notice_file.write_text(notice.model_dump_json())
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read().split("\n")
    assert proc.wait(timeout=10) == RESERVED_EXIT_CODE
    assert seen[0] == ["step", "41"]  # resumed after the earlier checkpoint
    emergency = [line for line in rest if line.startswith("emergency")]
    assert len(emergency) == 1
    saved_step = int(emergency[0].split()[1])
    last_printed = max(
        int(w[1]) for w in seen + [ln.split() for ln in rest if ln] if w[0] == "step"
    )
    assert saved_step == last_printed >= 53  # the step it was on when the signal arrived
    store = CheckpointStore(uri)
    latest = store.latest()
    assert latest.step == saved_step
    assert store.read_file(latest, "model.bin") == f"model@{saved_step}".encode()
    assert latest.metadata["emergency"] is True
    assert latest.metadata["attempt"] == 2 and latest.metadata["capacity"] == "SPOT"
    assert '"met_deadline":true' in emergency[0]
    assert store.read(f"emergency-{saved_step}.json") is None  # it went fine: no report file
