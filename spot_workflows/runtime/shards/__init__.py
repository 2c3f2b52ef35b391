"""Sharded ETL and batch inference: shard planning, the shard ledger and queue, the worker loop."""

from spot_workflows.runtime.shards.planning import (
    DoneRecord,
    FailureRecord,
    Partial,
    PartRef,
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

__all__ = [
    "DoneRecord",
    "FailureRecord",
    "PartRef",
    "Partial",
    "Shard",
    "ShardKind",
    "can_finish",
    "check_plan",
    "pending",
    "plan_digest",
    "plan_files",
    "plan_items",
    "plan_row_ranges",
    "progress_fraction",
    "static_partition",
]
