"""The checkpoint manifest: what one checkpoint holds, and the file-name rules that keep a
checkpoint inside its prefix. Pure data; the store (``store.py``) reads and writes it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spot_workflows.errors import CheckpointError, ConfigError

MANIFEST = "manifest.json"
"""A checkpoint's manifest object: ``step-<N>/manifest.json``, written after every data file."""
LATEST = "latest.json"
"""Copy of the newest manifest at the store's root, written last (a hint for cheap readers)."""

_BAD_NAME = re.compile(r"(?:^|/)\.{0,2}(?:/|$)|[\\\x00]|^[A-Za-z]:")  # '', '.', '..', '//', ...


class CheckpointWarning(UserWarning):
    """A checkpoint object was corrupt; an older checkpoint (or a directory scan) is used."""


def check_name(name: object, *, what: str = "checkpoint file name") -> str:
    """Reject names that could escape the checkpoint directory (``..``, absolute, backslashes)."""
    if not isinstance(name, str) or _BAD_NAME.search(name):
        raise ConfigError(
            f"{what} {name!r} is not allowed: use a non-empty relative path with '/' separators "
            "and no '..', '.', empty segments, backslashes or leading '/' (e.g. 'optim/state.pt')"
        )
    return name


@dataclass(frozen=True)
class ManifestFile:
    """One file of a checkpoint: its size and exactly one checksum (see ``digests.py``)."""

    name: str
    size: int
    sha256: str | None = None
    crc32c: str | None = None

    @property
    def algorithm(self) -> str:
        return "crc32c" if self.crc32c is not None else "sha256"

    @property
    def digest(self) -> str:
        return self.crc32c if self.crc32c is not None else (self.sha256 or "")

    @classmethod
    def of(cls, name: str, size: int, digest: str, algorithm: str = "sha256") -> ManifestFile:
        return cls(name, size, **{algorithm: digest})

    def matches(self, size: int, digest: str | None) -> bool:
        return size == self.size and digest == self.digest


class Manifest(BaseModel):
    """What one checkpoint holds; stored as ``step-<N>/manifest.json`` and ``latest.json``."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0)
    created_at: float  # epoch seconds
    files: list[ManifestFile] = Field(default_factory=list)
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    format: int = Field(default=1, ge=1, le=1)
    subdir: str | None = Field(default=None, pattern=r"^\.v-[0-9a-f]{1,64}$")
    """Set when the step was saved again: its files live in ``step-<N>/<subdir>/``."""

    @field_validator("files")
    @classmethod
    def _files(cls, files: list[ManifestFile]) -> list[ManifestFile]:
        names = [check_name(f.name) for f in files]
        for f in files:
            if (f.sha256 is None) == (f.crc32c is None) or f.size < 0:
                raise ValueError(f"file {f.name!r} needs a size >= 0 and one of sha256/crc32c")
        if len(set(names)) != len(names):
            raise ValueError("duplicate file names in manifest")
        return files

    def relpath(self, name: str) -> str:
        """Where file ``name`` lives, relative to the store root."""
        return (
            f"step-{self.step}/{self.subdir}/{name}" if self.subdir else f"step-{self.step}/{name}"
        )

    def file(self, name: str) -> ManifestFile:
        for f in self.files:
            if f.name == name:
                return f
        have = ", ".join(f.name for f in self.files) or "no files"
        raise CheckpointError(f"checkpoint step {self.step} has no file {name!r} (it has: {have})")
