"""CheckpointStore: crash-safe checkpoints on any fsspec filesystem (file://, s3://, gs://).

Layout under the store's root::

    step-<N>/<files...>       data files (names may contain '/' sub-directories)
    step-<N>/manifest.json    written after every data file: the checkpoint is visible from here on
    latest.json               copy of the newest manifest, written last (for cheap readers)

A re-save of a visible step puts its files in ``step-<N>/.v-<token>/`` (``Manifest.subdir``) so
the old checkpoint stays intact until the new manifest replaces it. ``step-<N>/manifest.json`` is
authoritative: :meth:`CheckpointStore.latest` returns the newest step whose manifest parses and
whose files have their recorded sizes, so a save killed at any moment leaves the previous one.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import secrets
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec.core
from fsspec.implementations.local import LocalFileSystem
from pydantic import ValidationError

from spot_workflows.config import validate_checkpoint_uri
from spot_workflows.errors import CheckpointError, ConfigError, CorruptCheckpointError
from spot_workflows.runtime.store import digests, faults
from spot_workflows.runtime.store.file_io import CHUNK, chunks, copy_hashed, fsync_dir
from spot_workflows.runtime.store.manifest import (  # noqa: F401  (re-exported)
    LATEST,
    MANIFEST,
    CheckpointWarning,
    Manifest,
    ManifestFile,
    check_name,
)
from spot_workflows.runtime.store.retention import prune_old_checkpoints, tidy_step_dir
from spot_workflows.runtime.store.retry import RetryPolicy, is_storage_error

log = logging.getLogger("spot_workflows.checkpoint")

_STEP_DIR = re.compile(r"step-(\d+)")
_TMP = ".spot-tmp-"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'document'}: {err['msg']}"


class CheckpointStore:
    """Atomic, verified checkpoints under one URI prefix; keeps the newest ``keep_last``."""

    def __init__(
        self,
        uri: str,
        *,
        keep_last: int = 3,
        storage_options: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        try:
            self.uri: str = validate_checkpoint_uri(uri)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"keep_last must be an integer >= 1, got {keep_last!r}")
        self.keep_last = keep_last
        self.retry = retry or RetryPolicy()  # transient errors (throttling, 5xx) per object
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        except ImportError as exc:
            raise ConfigError(
                f"cannot open {self.uri}: {exc}. Install the extra for this scheme "
                "(pip install 'spot-workflows[aws]' for s3://, 'spot-workflows[gcp]' for gs://)"
            ) from exc
        self.root: str = root.rstrip("/") or "/"
        self._local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r}, keep_last={self.keep_last})"

    def _path(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}"

    @staticmethod
    def _tmp(path: str) -> str:
        head, base = posixpath.split(path)
        return f"{head}/{_TMP}{secrets.token_hex(6)}-{base}"

    # -- small objects (the attempt ledger lives next to the checkpoints) -----------------------

    def write_atomic(self, relpath: str, data: bytes) -> None:
        """Write ``relpath`` (relative to the root) so readers never see a partial object."""
        path = self._path(check_name(relpath, what="object path"))
        try:
            if self._local:
                tmp = self._tmp(path)
                self._write(tmp, bytes(data))
                os.replace(tmp, path)
                fsync_dir(posixpath.dirname(path))
            else:  # a single PUT is atomic on object stores
                self.retry.call(lambda: self.fs.pipe_file(path, bytes(data)), what=path)
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            raise CheckpointError(
                f"could not write {self.uri}/{relpath} ({self.retry.attempts} tries): "
                f"{type(exc).__name__}: {exc}; check permissions, free space and the store's "
                "availability, then retry"
            ) from exc

    def read(self, relpath: str) -> bytes | None:
        """Contents of ``relpath`` (relative to the root), or None if it does not exist."""
        return self._cat(self._path(check_name(relpath, what="object path")))

    def _cat(self, path: str) -> bytes | None:
        try:
            return self.retry.call(lambda: self.fs.cat_file(path), what=path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            raise CheckpointError(
                f"could not read {path} in {self.uri}: {type(exc).__name__}: {exc}"
            ) from exc

    # -- saving --------------------------------------------------------------------------------

    def _write(self, path: str, value: bytes | Path) -> tuple[int, str]:
        """Write one object, retrying transient errors (not when streaming from a pipe)."""
        again = isinstance(value, bytes) or value.is_file()
        return self.retry.call(lambda: self._write_once(path, value), what=path, retry=again)

    def _write_once(self, path: str, value: bytes | Path) -> tuple[int, str]:
        """Stream ``value`` to ``path``, hashing as it goes; fsync on local disks."""
        if not self._local:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with self.fs.open(path, "wb") as f:
                return copy_hashed(chunks(value), f)
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            result = copy_hashed(chunks(value), f)
            f.flush()
            os.fsync(f.fileno())
        return result

    @staticmethod
    def _expand(files: Mapping[str, Any]) -> list[tuple[str, bytes | Path]]:
        out: list[tuple[str, bytes | Path]] = []
        for name, value in files.items():
            check_name(name)
            if isinstance(value, bytes | bytearray | memoryview):
                out.append((name, bytes(value)))
            elif not isinstance(value, os.PathLike):
                raise ConfigError(
                    f"checkpoint file {name!r} must be bytes or a pathlib.Path (file or "
                    f"directory), got {type(value).__name__}"
                )
            elif (p := Path(value)).is_dir():
                for sub in sorted(q for q in p.rglob("*") if q.is_file()):
                    out.append((f"{name}/{sub.relative_to(p).as_posix()}", sub))
            elif p.exists():  # a regular file, or a pipe to stream from
                out.append((name, p))
            else:
                raise ConfigError(f"checkpoint file {name!r}: {p} does not exist")
        names = [n for n, _ in out]
        if MANIFEST in names or len(set(names)) != len(names):
            raise ConfigError(f"file names must be unique and not {MANIFEST!r}: {sorted(names)}")
        return out

    def check_new_save(
        self, step: int, progress: float | None, metadata: dict[str, Any] | None
    ) -> None:
        """Validate a save's arguments, and refuse a step older than a visible checkpoint."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"checkpoint step must be an integer >= 0, got {step!r}")
        if progress is not None and not 0.0 <= progress <= 1.0:
            raise ConfigError(f"progress must be a fraction between 0 and 1, got {progress!r}")
        try:
            json.dumps(metadata or {}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint metadata must be JSON-serializable: {exc}") from exc
        for other in self._step_dirs():
            if other > step and self.fs.exists(self._path(f"step-{other}/{MANIFEST}")):
                raise CheckpointError(
                    f"cannot save step {step}: {self.uri} already holds a newer checkpoint (step "
                    f"{other}). Call restore() and continue from it, or use a fresh checkpoint URI."
                )

    def save(
        self,
        step: int,
        files: Mapping[str, bytes | os.PathLike[str]],
        *,
        progress: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write a checkpoint for ``step``; it becomes visible only when complete.

        Values are bytes or paths (streamed in chunks; a directory adds every file under it as
        ``name/<relative path>``). Re-saving a visible step replaces it atomically.
        """
        entries = self._expand(files)
        self.check_new_save(step, progress, metadata)
        old = self._load_manifest(step, warn=False)
        draft = Manifest(
            step=step,
            created_at=0.0,
            progress=progress,
            metadata=dict(metadata or {}),
            subdir=f".v-{secrets.token_hex(6)}" if old is not None else None,
        )
        staged: list[tuple[str, str]] = []  # (final path, path written)
        written: list[ManifestFile] = []
        try:
            for name, value in entries:
                final = self._path(draft.relpath(name))
                staged.append((final, self._tmp(final) if self._local else final))
                written.append(ManifestFile(name, *self._write(staged[-1][1], value)))
            if self._local:
                faults.reached("staged")
                for final, tmp in staged:
                    os.replace(tmp, final)
                for d in {posixpath.dirname(final) for final, _ in staged}:
                    fsync_dir(d)
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            for final, tmp in staged:
                if tmp != final:
                    Path(tmp).unlink(missing_ok=True)
            raise CheckpointError(
                f"could not write checkpoint step {step} to {self.uri} ({self.retry.attempts} "
                f"tries per object): {type(exc).__name__}: {exc}. The previous checkpoint is "
                "intact; check free space, permissions and the store's availability, then retry."
            ) from exc
        manifest = draft.model_copy(update={"files": written, "created_at": time.time()})
        body = manifest.model_dump_json(indent=1, exclude_none=True).encode()
        self.write_atomic(f"step-{step}/{MANIFEST}", body)  # the checkpoint is visible from here
        try:  # latest.json is only a hint for cheap readers: the step manifest is authoritative
            self.write_atomic(LATEST, body)
        except CheckpointError as exc:
            log.warning("checkpoint step %d saved, but %s; readers scan step dirs", step, exc)
        faults.reached("tidy")
        tidy_step_dir(self, manifest)
        prune_old_checkpoints(self)
        return manifest

    # -- finding and reading -------------------------------------------------------------------

    def _step_dirs(self) -> list[int]:
        """Numbers of every ``step-<N>`` directory, newest first (with or without manifest)."""
        self.fs.invalidate_cache()  # other processes write here: never trust cached listings
        try:
            entries = self.retry.call(lambda: self.fs.ls(self.root, detail=False), what=self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = (_STEP_DIR.fullmatch(posixpath.basename(str(e).rstrip("/"))) for e in entries)
        return sorted({int(m.group(1)) for m in found if m}, reverse=True)

    def _listing(self, sdir: str) -> dict[str, int]:
        """Relative name -> size of every file under ``sdir`` (relative to the root)."""
        path = self._path(sdir)
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.fs._strip_protocol(path).rstrip("/") + "/"
        out = {}
        for p, info in found.items():
            p = self.fs._strip_protocol(p)
            if p.startswith(prefix) and info.get("type", "file") == "file":
                out[p[len(prefix) :]] = int(info.get("size") or 0)
        return out

    def _warn_corrupt(self, rel: str, why: str, then: str = "using an older checkpoint") -> None:
        msg = f"corrupt checkpoint object {self.uri}/{rel}: {why}; {then}"
        log.warning(msg)
        warnings.warn(msg, CheckpointWarning, stacklevel=3)

    def _load_manifest(self, step: int, *, warn: bool = True) -> Manifest | None:
        rel = f"step-{step}/{MANIFEST}"
        raw = self._cat(self._path(rel))
        if raw is None:
            log.debug("%s/step-%d has no manifest (incomplete save); ignored", self.uri, step)
            return None
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            if warn:
                self._warn_corrupt(rel, f"unreadable manifest ({_first_error(exc)})")
            return None
        if manifest.step != step:
            if warn:
                self._warn_corrupt(rel, f"manifest says step {manifest.step}")
            return None
        return manifest

    def _sizes_problem(self, manifest: Manifest) -> tuple[str, str] | None:
        """(object, reason) for the first file missing or of the wrong size, else None."""
        sdir = f"step-{manifest.step}"
        sizes = {f"{sdir}/{rel}": size for rel, size in self._listing(sdir).items()}
        for f in manifest.files:
            rel = manifest.relpath(f.name)
            if rel not in sizes:
                return rel, "file is missing"
            if sizes[rel] != f.size:
                return rel, f"size {sizes[rel]} != recorded {f.size}"
        return None

    def latest(self) -> Manifest | None:
        """The newest valid checkpoint (manifest parses, every file present with its size)."""
        raw = self._cat(self._path(LATEST))
        if raw is not None:
            try:
                Manifest.model_validate_json(raw)
            except ValidationError as exc:
                why = f"unreadable ({_first_error(exc)})"
                self._warn_corrupt(LATEST, why, "scanning the step directories instead")
        for step in self._step_dirs():
            manifest = self._load_manifest(step)
            if manifest is None:
                continue
            problem = self._sizes_problem(manifest)
            if problem is None:
                return manifest
            self._warn_corrupt(*problem)
        return None

    def steps(self) -> list[int]:
        """Steps that have a manifest (visible checkpoints), oldest first; not verified."""
        return sorted(
            s for s in self._step_dirs() if self.fs.exists(self._path(f"step-{s}/{MANIFEST}"))
        )

    def _corrupt(self, manifest: Manifest, f: ManifestFile, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"checkpoint file {self.uri}/{manifest.relpath(f.name)} {why}. The checkpoint is "
            f"damaged: delete {self.uri}/step-{manifest.step}/{MANIFEST} so latest() falls "
            "back to an older checkpoint, or start from scratch."
        )

    def read_file(self, manifest: Manifest, name: str) -> bytes:
        """Contents of one checkpoint file, verified against its recorded size and checksum."""
        f = manifest.file(name)
        data = self._cat(self._path(manifest.relpath(f.name)))
        if data is None:
            raise self._corrupt(manifest, f, "is missing")
        if not f.matches(len(data), digests.of(data, f.algorithm)):
            raise self._corrupt(manifest, f, f"does not match its recorded size/{f.algorithm}")
        return data

    def restore_to(self, manifest: Manifest, directory: str | os.PathLike[str]) -> Path:
        """Stream every file of ``manifest`` into local ``directory`` (verified); return it."""
        root = Path(directory)
        for f in manifest.files:
            dest = root.joinpath(*f.name.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{_TMP}{secrets.token_hex(6)}-{dest.name}")
            try:
                src_path = self._path(manifest.relpath(f.name))
                with self.fs.open(src_path, "rb") as src, open(tmp, "wb") as out:
                    pieces = iter(lambda: src.read(CHUNK), b"")
                    size, digest = copy_hashed(pieces, out, f.algorithm)
            except FileNotFoundError:
                tmp.unlink(missing_ok=True)
                raise self._corrupt(manifest, f, "is missing") from None
            if not f.matches(size, digest):
                tmp.unlink(missing_ok=True)
                raise self._corrupt(manifest, f, f"does not match its recorded size/{f.algorithm}")
            os.replace(tmp, dest)
        return root
