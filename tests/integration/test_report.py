"""`spot-workflows report` on a real local run; the HTML report rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from spot_workflows.backends.local import LocalBackend
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Action
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

CLI = str(Path(sys.executable).parent / "spot-workflows")
CHROMIUM = next(
    (
        shutil.which(n)
        for n in ("chromium-headless-shell", "chromium", "chromium-browser")
        if shutil.which(n)
    ),
    None,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    spec = StepSpec(
        key="report-step",
        command=[
            sys.executable,
            "-m",
            "spot_workflows.examples.toy_train",
            "--steps=150",
            "--every=30",
            "--step-seconds=0.02",
        ],
        checkpoint_uri=f"file://{root / 'ckpt' / 'report-step'}",
    )
    store = CheckpointStore(spec.checkpoint_uri)
    with LocalBackend(state_dir=root / "b") as backend:
        runner = StepRunner(
            spec=spec, backend=backend, policy=SpotPolicy(preemption_budget=1), poll_interval=0.05
        )
        reclaimed = False
        while (decision := runner.tick()).action not in (Action.SUCCEED, Action.FAIL):
            live = runner.ledger.live
            # reclaim (with a notice) once the first periodic checkpoint exists, whatever the load
            if not reclaimed and live is not None and live.job_id and store.latest() is not None:
                backend.reclaim(live.job_id)
                reclaimed = True
            time.sleep(0.02)
        assert decision.action is Action.SUCCEED
    return root


def test_report_json_matches_the_ledger(run_dir):
    proc = subprocess.run(
        [CLI, "report", f"file://{run_dir / 'ckpt'}", "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    (step,) = rep["steps"]
    cost = step["cost"]
    assert [a["capacity"] for a in cost["attempts"]] == ["SPOT", "ON_DEMAND"]
    assert cost["reclaims"] == 1 and rep["reclaims_by_zone"] == {"local": 1}
    assert cost["total_usd"] == pytest.approx(sum(a["cost_usd"] for a in cost["attempts"]))
    spot, od = cost["attempts"]
    assert spot["hourly_usd"] == 0.9731 and od["hourly_usd"] == 3.06
    # lost = from the attempt's newest checkpoint (the emergency one, taken on the notice) to its
    # end, and the next attempt resumed from exactly that checkpoint
    first, second = Ledger.open(
        CheckpointStore(f"file://{run_dir / 'ckpt' / 'report-step'}"), "report-step"
    ).attempts
    assert first.last_checkpoint_at is not None and first.last_checkpoint_at >= first.started_at
    assert spot["lost_hours"] * 3600 == pytest.approx(
        first.ended_at - first.last_checkpoint_at, abs=0.01
    )
    assert spot["lost_hours"] < spot["billed_hours"]
    assert second.resumed_from_step == first.last_checkpoint_step
    assert 0 < cost["savings_pct"] < 100
    assert cost["unpriced"] == []


def test_report_on_a_path_without_ledger_says_what_to_pass(tmp_path):
    proc = subprocess.run([CLI, "report", f"file://{tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no attempt ledger" in proc.stderr


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Minimal PNG decoder (8-bit RGB/RGBA, no interlace): enough to count colours."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    pixels = [row[i : i + 3] for row in rows for i in range(0, stride, bpp)]
    return width, height, pixels


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Chromium (apt-get install chromium-headless-shell); .ci/run installs it",
)
def test_html_report_renders_the_timeline_in_chromium(run_dir, tmp_path):
    html = tmp_path / "report.html"
    proc = subprocess.run(
        [CLI, "report", f"file://{run_dir / 'ckpt'}", "--html", str(html)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=60
    )
    assert 'class="timeline"' in dom.stdout and 'class="attempt spot"' in dom.stdout
    assert 'class="attempt on_demand"' in dom.stdout and 'class="reclaim"' in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1000,900", html.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    _, _, pixels = _png_pixels(shot.read_bytes())
    green = sum(1 for p in pixels if p == bytes((0x2B, 0x8A, 0x3E)))
    blue = sum(1 for p in pixels if p == bytes((0x18, 0x64, 0xAB)))
    assert green > 200, "the spot bar did not render"
    assert blue > 200, "the on-demand bar did not render"
