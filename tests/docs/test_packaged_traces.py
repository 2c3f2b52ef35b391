"""The public spot traces ship with the package and load by name (what the docs' examples use)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spot_workflows.errors import ConfigError
from spot_workflows.sim.traces import available_traces, load_trace

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ROOT / "spot_workflows" / "data" / "traces"
SHARED = ROOT.parent / "shared" / "traces"
GRID = [
    f"aws-10-26-2022/us-{z}_{g}_{n}"
    for z in ("west-2a", "west-2b")
    for g in ("k80", "v100")
    for n in (1, 8)
]
HELD_OUT = [
    f"preemption/aws-04-22-2023/{z}_v100_1"
    for z in ("us-east-1c", "us-east-1f", "us-west-2b", "us-west-2c")
]


def test_the_benchmark_traces_are_packaged_with_their_attribution():
    assert sorted(GRID + HELD_OUT) == available_traces()
    total = sum(p.stat().st_size for p in PACKAGED.rglob("*.json"))
    assert total < 5 * 1024 * 1024
    attribution = (PACKAGED / "README.md").read_text()
    assert "skypilot-org/spot-traces" in attribution and "NSDI" in attribution


def test_a_name_loads_with_or_without_json_and_a_path_still_works(tmp_path):
    by_name = load_trace("aws-10-26-2022/us-west-2a_v100_1")
    assert by_name == load_trace("aws-10-26-2022/us-west-2a_v100_1.json")
    assert by_name.name == "us-west-2a_v100_1" and by_name.gap_s == 600 and by_name.ticks == 3895
    held = load_trace(HELD_OUT[1])
    assert held.gap_s == 32 and held.ticks > 10_000
    own = tmp_path / "aws-10-26-2022" / "us-west-2a_v100_1.json"  # a file wins over the name
    own.parent.mkdir()
    own.write_text(json.dumps({"metadata": {"gap_seconds": 60}, "data": [1, 0, 1]}))
    assert load_trace(own).available == (True, False, True)


def test_an_unknown_name_fails_in_one_line_listing_the_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_trace("aws-10-26-2022/us-west-2c_v100_1")
    message = str(info.value)
    assert "\n" not in message and "no such file and no packaged trace" in message
    assert all(name in message for name in available_traces())
    with pytest.raises(ConfigError, match="is a directory"):
        load_trace(tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared/traces next to the checkout")
def test_the_packaged_copies_are_byte_identical_to_the_shared_traces():
    for name in available_traces():
        assert (PACKAGED / f"{name}.json").read_bytes() == (SHARED / f"{name}.json").read_bytes()


def test_every_trace_the_docs_name_resolves():
    named = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        named |= set(re.findall(r"--trace\s+(\S+)", doc.read_text()))
    named -= {"NAME_OR_FILE"}
    assert named, "no --trace example in the docs"
    for name in named:
        assert load_trace(name).ticks > 0, name
