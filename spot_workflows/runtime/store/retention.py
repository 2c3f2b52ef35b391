"""Retention after a save: tidying the saved step's directory and pruning old checkpoints.

Both run once a checkpoint is already visible (its manifest written), from
:meth:`CheckpointStore.save` and :meth:`StreamingSave.tidy_and_prune`. They are best-effort:
storage errors are logged, never raised, so a saved checkpoint is never reported as failed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from spot_workflows.errors import CheckpointError
from spot_workflows.runtime.store.manifest import MANIFEST, Manifest
from spot_workflows.runtime.store.retry import is_storage_error

if TYPE_CHECKING:
    from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

log = logging.getLogger("spot_workflows.checkpoint")


def _best_effort(exc: Exception) -> bool:
    """Errors that housekeeping after a save may swallow (it logs them instead)."""
    return isinstance(exc, CheckpointError) or is_storage_error(exc)


def tidy_step_dir(store: CheckpointStore, manifest: Manifest) -> None:
    """Remove leftovers in the step dir (temp files, an older save of the step)."""
    sdir = f"step-{manifest.step}"
    keep = {manifest.relpath(f.name) for f in manifest.files} | {f"{sdir}/{MANIFEST}"}
    try:
        for rel in store._listing(sdir):
            if f"{sdir}/{rel}" not in keep:
                _rm_quiet(store, store._path(f"{sdir}/{rel}"))
        if store._local:  # object stores have no empty directories
            for d in sorted(Path(store._path(sdir)).rglob("*"), reverse=True):
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
    except Exception as exc:  # best-effort: the checkpoint is already saved
        if not _best_effort(exc):
            raise
        log.debug("could not tidy %s/%s: %s", store.uri, sdir, exc)


def prune_old_checkpoints(store: CheckpointStore) -> None:
    """Delete step directories older than the newest ``keep_last`` valid checkpoints."""
    kept: list[int] = []
    try:
        for step in store._step_dirs():
            if len(kept) < store.keep_last:
                m = store._load_manifest(step, warn=False)
                if m is not None and store._sizes_problem(m) is None:
                    kept.append(step)
                continue
            log.debug("pruning checkpoint step %d in %s", step, store.uri)
            _rm_quiet(store, store._path(f"step-{step}/{MANIFEST}"))  # invisible first
            store.fs.rm(store._path(f"step-{step}"), recursive=True)
    except Exception as exc:  # best-effort: never report a saved checkpoint as failed
        if not _best_effort(exc):
            raise
        log.warning("could not prune old checkpoints in %s: %s", store.uri, exc)


def _rm_quiet(store: CheckpointStore, path: str) -> None:
    with contextlib.suppress(OSError):
        store.fs.rm(path)
