"""The PyTorch example under the worker contract: SIGTERM mid-run -> emergency flush of the newest
state, exit 75 -> the next attempt resumes and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed (extra 'torch')")

from spot_workflows.runtime.store.checkpoint_store import CheckpointStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CMD = [sys.executable, "-m", "spot_workflows.examples.torch_train", "--steps=120", "--every=20"]


def run(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        CMD + args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, **kw
    )


def test_sigterm_flushes_the_newest_state_and_the_next_attempt_resumes_bit_identically(
    tmp_path, capsys
):
    from spot_workflows.examples import torch_train

    torch_train.main([*CMD[3:], "--reference"])  # uninterrupted, in this process
    reference = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}

    uri = (tmp_path / "ckpt").as_uri()
    env = {**env, "SPOT_CHECKPOINT_URI": uri, "SPOT_ATTEMPT": "1", "SPOT_CAPACITY": "SPOT"}
    worker = subprocess.Popen(
        CMD + ["--step-seconds=0.05"], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    lines = []
    for line in worker.stdout:
        lines.append(line.strip())
        if line.startswith("STEP 30"):
            worker.send_signal(signal.SIGTERM)  # the reclaim notice
            break
    rest, _ = worker.communicate(timeout=120)
    lines += rest.splitlines()
    assert worker.returncode == 75, lines[-5:]
    emergency = [ln for ln in lines if ln.startswith("EMERGENCY")]
    assert len(emergency) == 1
    stopped_at = int(emergency[0].split()[1])
    assert 30 <= stopped_at < 120
    latest = CheckpointStore(uri).latest()
    assert latest.step == stopped_at and latest.metadata["emergency"] is True

    env["SPOT_ATTEMPT"] = "2"
    second = run([], env)
    assert second.returncode == 0, second.stderr[-2000:]
    out = second.stdout.strip().splitlines()
    assert out[0] == f"RESUME {stopped_at}"
    assert json.loads(out[-1]) == reference  # same weights, bit for bit, same final step
