"""Checkpoint storage: the crash-safe store, its manifest, compare-and-swap writes, bulk I/O."""

from spot_workflows.runtime.store.checkpoint_store import (
    LATEST,
    MANIFEST,
    CheckpointStore,
    CheckpointWarning,
    Manifest,
    check_name,
)

__all__ = ["LATEST", "MANIFEST", "CheckpointStore", "CheckpointWarning", "Manifest", "check_name"]
