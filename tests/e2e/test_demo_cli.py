"""The README's demo command, run as a user would (the installed console script)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_demo_json(tmp_path):
    exe = shutil.which("spot-workflows") or str(Path(sys.executable).parent / "spot-workflows")
    proc = subprocess.run(
        [exe, "demo", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    attempts = out["attempts"]
    preempted = [a for a in attempts if a["outcome"] == "PREEMPTED"]
    assert len(preempted) >= 2
    assert all(a["resumed_from_step"] > 0 for a in attempts[1:])
    assert all(a["steps_lost"] == 0 for a in preempted)
    assert attempts[-1]["capacity"] == "ON_DEMAND" and attempts[-1]["outcome"] == "SUCCEEDED"
    assert out["escalated"] is True
    assert out["final_checksum"] == out["reference_checksum"]
    cost = out["cost"]
    assert cost["reclaims"] == 2 and cost["unpriced"] == []
    assert 0 < cost["total_usd"] < cost["on_demand_equivalent_usd"]
    for a in attempts:
        assert {"capacity", "outcome", "resumed_from_step", "steps_lost"} <= a.keys()


def test_demo_human_output(tmp_path):
    exe = shutil.which("spot-workflows") or str(Path(sys.executable).parent / "spot-workflows")
    proc = subprocess.run(
        [exe, "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    out = " ".join((proc.stdout + proc.stderr).split())  # rich wraps to the terminal width
    assert proc.returncode == 0, out
    assert "reclaimed at steps 120, 240" in out
    assert out.count("preempted") >= 2 and "escalated" in out
    assert "attempts of demo-train" in out and "ON_DEMAND" in out
    assert "bit-identical" in out and "MISMATCH" not in out
    assert "savings" in out
