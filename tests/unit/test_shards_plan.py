"""Shard planning (pure): stable ids, exact coverage, static partitions, progress, deadlines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spot_workflows.errors import ConfigError
from spot_workflows.runtime.shards.planning import (
    Shard,
    ShardKind,
    can_finish,
    check_plan,
    pending,
    plan_digest,
    plan_files,
    plan_items,
    plan_row_ranges,
    progress_fraction,
    static_partition,
)
from spot_workflows.runtime.shards.queue import array_position


@given(total=st.integers(0, 5000), per=st.integers(1, 700))
def test_row_ranges_cover_every_row_exactly_once(total, per):
    shards = plan_row_ranges(total, per)
    rows = [r for s in shards for r in range(s.start, s.stop)]
    assert rows == list(range(total))
    assert all(0 < s.rows <= per for s in shards)
    assert [s.index for s in shards] == list(range(len(shards)))
    check_plan(shards)  # ids unique and safe
    assert plan_row_ranges(total, per) == shards  # stable


def test_row_range_ids_are_readable_and_sort_in_plan_order():
    shards = plan_row_ranges(2_500_000, 1_000_000)
    assert [s.id for s in shards] == [
        "r0000000-1000000",
        "r1000000-2000000",
        "r2000000-2500000",
    ]
    assert sorted(s.id for s in shards) == [s.id for s in shards]


@pytest.mark.parametrize("bad", [(-1, 10), (10, 0), (True, 3), (10, 2.5)])
def test_row_ranges_reject_bad_sizes(bad):
    with pytest.raises(ConfigError):
        plan_row_ranges(*bad)


def test_file_shards_are_sorted_deduplicated_and_independent_of_input_order():
    paths = ["s3://b/in/part-2.parquet", "s3://b/in/part-10.parquet", "s3://b/in/Part 1.PARQUET"]
    a = plan_files(paths, rows={"s3://b/in/part-2.parquet": 7})
    b = plan_files(list(reversed(paths)) + paths[:1], rows={"s3://b/in/part-2.parquet": 7})
    assert a == b and len(a) == 3
    check_plan(a)
    assert a[0].id.startswith("f-part-1.parquet-")  # readable slug + hash
    two = next(s for s in a if s.key == "s3://b/in/part-2.parquet")
    assert (two.start, two.stop, two.rows) == (0, 7, 7)
    assert next(s for s in a if s.key != two.key).rows is None
    # Same base name in two directories: still two distinct ids.
    c = plan_files(["a/x.csv", "b/x.csv"])
    assert c[0].id != c[1].id


def test_items_keep_user_order_and_refuse_duplicates():
    shards = plan_items(["prompts/zeta.jsonl", "prompts/alpha.jsonl"])
    assert [s.key for s in shards] == ["prompts/zeta.jsonl", "prompts/alpha.jsonl"]
    assert all(s.kind is ShardKind.ITEM for s in shards)
    with pytest.raises(ConfigError, match="repeated"):
        plan_items(["a", "b", "a"])


def test_digest_changes_with_the_plan_and_round_trips():
    a, b = plan_row_ranges(100, 10), plan_row_ranges(100, 20)
    assert plan_digest(a) != plan_digest(b)
    assert [Shard.from_dict(s.to_dict()) for s in a] == a
    assert plan_digest([Shard.from_dict(s.to_dict()) for s in a]) == plan_digest(a)


def test_check_plan_rejects_unsafe_or_repeated_ids():
    good = plan_row_ranges(20, 10)
    with pytest.raises(ConfigError, match="twice"):
        check_plan([good[0], Shard(id=good[0].id, index=1, kind=ShardKind.ROWS)])
    with pytest.raises(ConfigError, match="a-z0-9"):
        check_plan([Shard(id="../x", index=0, kind=ShardKind.ITEM)])
    with pytest.raises(ConfigError, match="index"):
        check_plan([good[1]])


@given(n=st.integers(0, 60), count=st.integers(1, 9))
def test_static_partitions_are_disjoint_and_complete(n, count):
    shards = plan_row_ranges(n * 3, 3)
    parts = [static_partition(shards, i, count) for i in range(count)]
    ids = [s.id for p in parts for s in p]
    assert sorted(ids) == sorted(s.id for s in shards)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced


def test_static_partition_rejects_an_index_outside_the_array():
    with pytest.raises(ConfigError):
        static_partition(plan_row_ranges(10, 1), 3, 3)


def test_array_position_reads_aws_and_gcp_variables():
    assert array_position({}) == (0, 1)
    assert array_position({"AWS_BATCH_JOB_ARRAY_INDEX": "3", "SPOT_ARRAY_SIZE": "8"}) == (3, 8)
    assert array_position({"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "4"}) == (1, 4)
    assert array_position({"BATCH_TASK_INDEX": "1"}, count=2) == (1, 2)
    assert array_position({"AWS_BATCH_JOB_ARRAY_INDEX": "9"}, index=0, count=2) == (0, 2)
    with pytest.raises(ConfigError, match="SPOT_ARRAY_SIZE"):
        array_position({"AWS_BATCH_JOB_ARRAY_INDEX": "2"})
    with pytest.raises(ConfigError, match="outside"):
        array_position({"BATCH_TASK_INDEX": "4", "BATCH_TASK_COUNT": "4"})
    with pytest.raises(ConfigError, match="integer"):
        array_position({"BATCH_TASK_INDEX": "x", "BATCH_TASK_COUNT": "4"})


def test_pending_and_progress_weigh_rows_when_known():
    shards = plan_row_ranges(100, 40)  # 40, 40, 20 rows
    assert [s.id for s in pending(shards, {shards[0].id}, {shards[2].id})] == [shards[1].id]
    assert progress_fraction(shards, {shards[2].id}) == pytest.approx(0.2)
    assert progress_fraction(shards, {s.id for s in shards}) == 1.0
    files = plan_files(["a", "b", "c", "d"])  # rows unknown: by count
    assert progress_fraction(files, {files[0].id}) == 0.25
    assert progress_fraction([], set()) == 1.0


def test_can_finish_compares_the_estimate_with_the_time_left():
    kw = dict(expected_shard_s=None, elapsed_in_shard_s=1.0, commit_s=0.1, safety=1.5)
    assert can_finish(rows_left=1000, seconds_per_row=0.001, time_left_s=2.0, **kw)
    assert not can_finish(rows_left=1000, seconds_per_row=0.001, time_left_s=1.0, **kw)
    kw["expected_shard_s"] = 10.0  # unknown rows: typical shard time minus elapsed
    assert can_finish(rows_left=None, seconds_per_row=None, time_left_s=15.0, **kw)
    assert not can_finish(rows_left=None, seconds_per_row=None, time_left_s=12.0, **kw)
    kw["expected_shard_s"] = None  # nothing known: checkpoint inside the shard
    assert not can_finish(rows_left=None, seconds_per_row=None, time_left_s=1e9, **kw)
