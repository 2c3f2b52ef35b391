"""Checkpointing inside the worker: the Checkpointer, async snapshots and writers, training hooks."""

from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer, EmergencySaveReport

__all__ = ["Checkpointer", "EmergencySaveReport"]
