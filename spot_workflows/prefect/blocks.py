"""Prefect blocks that configure spot steps: the spot policy and one backend block per kind.

Every block validates on construction (and on ``Block.load``): a bad value raises a pydantic
``ValidationError`` that names the field. A backend block is a view of its backend's settings
model (:mod:`spot_workflows.backends.settings`, shared with the Airflow connections): its fields
are the model's, and the model builds the backend and its termination notice source. Secrets are
``SecretStr`` and never appear in reprs, logs or the Prefect UI. The blocks are registered
through the ``prefect.collections`` entry point, so a Prefect server that has spot-workflows
installed lists them.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from spot_workflows.backends.base import Backend
from spot_workflows.backends.notice_sources import NoticeSource
from spot_workflows.backends.settings import BackendSettings, LocalSettings, rename_deprecated
from spot_workflows.config import SpotPolicy, validate_checkpoint_uri
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

DOCS_URL = "https://github.com/spot-workflows/spot-workflows/blob/main/docs/prefect.md"
"""Where the blocks' documentation lives (the Prefect UI links it from each block type)."""


def spot_workflows_home() -> Path:
    """``$SPOT_WORKFLOWS_HOME`` or ``~/.spot-workflows``: default home of local state."""
    return Path(os.environ.get("SPOT_WORKFLOWS_HOME") or "~/.spot-workflows").expanduser()


def _policy_field_docs() -> dict[str, str]:
    """The attribute docstrings of :class:`SpotPolicy`'s fields (its documentation)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(SpotPolicy)))
    except (OSError, TypeError, SyntaxError):  # no source (e.g. a bytecode-only install)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.replace("``", "").split())
    return docs


def _policy_fields() -> type[BaseModel]:
    """A model with exactly :class:`SpotPolicy`'s fields, constraints and defaults, each with a
    description: the block follows the policy as it grows, with nothing to keep in sync."""
    docs = _policy_field_docs()
    fields: dict[str, Any] = {}
    for name, info in SpotPolicy.model_fields.items():
        annotation = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        text = docs.get(name) or f"See spot_workflows.SpotPolicy.{name}"
        description = text if text.endswith(".") else text + "."
        fields[name] = (annotation, Field(default=info.default, description=description))
    return create_model("SpotPolicyFields", **fields)


class SpotPolicyBlock(Block, _policy_fields()):  # type: ignore[misc]
    """How a step spends spot capacity and when it escalates to on-demand.

    The fields are those of ``spot_workflows.SpotPolicy``, with the same defaults and limits;
    preemptions, application errors and infrastructure faults each have their own budget.

    Example:
        ```python
        from spot_workflows.prefect import SpotPolicyBlock

        policy = SpotPolicyBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Spot Workflows Policy"
    _documentation_url = DOCS_URL

    @model_validator(mode="after")
    def _valid_policy(self) -> SpotPolicyBlock:
        self.to_policy()  # cross-field rules live in SpotPolicy; its errors name the field
        return self

    def to_policy(self) -> SpotPolicy:
        """The validated :class:`~spot_workflows.SpotPolicy` this block describes."""
        return SpotPolicy(**{name: getattr(self, name) for name in SpotPolicy.model_fields})


def settings_fields(model: type[BackendSettings]) -> type[BaseModel]:
    """A model with exactly the settings model's fields (but ``checkpoint_root``, which every
    backend block has), constraints, defaults and descriptions: a block's fields follow its
    backend's settings, with nothing to keep in sync."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name == "checkpoint_root":
            continue
        annotation = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        if info.default_factory is not None:
            spec = Field(default_factory=info.default_factory, description=info.description)
        elif info.is_required():
            spec = Field(description=info.description)
        else:
            spec = Field(default=info.default, description=info.description)
        fields[name] = (annotation, spec)
    return create_model(f"{model.__name__}Fields", **fields)


class SpotBackendBlock(Block, ABC):
    """Where spot steps run and where their checkpoints and ledger live (interface)."""

    settings_model: ClassVar[type[BackendSettings] | None] = None
    """The backend's settings model this block is a view of."""

    # declared here, not generated per backend, so that every block has it (same description
    # and same check as the settings models')
    checkpoint_root: str | None = Field(
        default=None, description=BackendSettings.model_fields["checkpoint_root"].description
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_settings(cls, data: Any) -> Any:
        model = cls.settings_model
        return data if model is None else rename_deprecated(data, model.RENAMED, cls.__name__)

    @field_validator("checkpoint_root")
    @classmethod
    def _checkpoint_root(cls, value: str | None) -> str | None:
        return None if value is None else validate_checkpoint_uri(value)

    @model_validator(mode="after")
    def _valid_settings(self) -> SpotBackendBlock:
        if self.settings_model is not None:
            self.settings()  # cross-field rules live in the settings model; errors name the field
        return self

    def settings(self) -> BackendSettings:
        """The validated backend settings this block describes."""
        model = self.settings_model
        if model is None:
            raise NotImplementedError(f"{type(self).__name__} has no settings model")
        data = {name: getattr(self, name) for name in model.model_fields if hasattr(self, name)}
        name = getattr(self, "_block_document_name", None)
        what = f"{type(self).__name__} block" + (f" {name!r}" if name else "")
        return model.load(data, what=what)

    def checkpoint_uri_for(self, step_key: str) -> str:
        """Checkpoint URI of one step: ``<checkpoint_root>/<step_key>``."""
        root = self.checkpoint_root or self.default_checkpoint_root()
        return f"{root.rstrip('/')}/{step_key}"

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for the checkpoint store (credentials, endpoint); none by default."""
        return {}

    def checkpoint_store(self, checkpoint_uri: str) -> CheckpointStore:
        """The store holding one step's checkpoints and ledger, reached like the backend."""
        return CheckpointStore(checkpoint_uri, storage_options=self.storage_options() or None)

    def default_checkpoint_root(self) -> str:
        raise ConfigError(
            f"{type(self).__name__}.checkpoint_root is not set: give the block a checkpoint_root "
            "(e.g. s3://bucket/checkpoints) or pass checkpoint_uri= to the step"
        )

    def notice_source(self, *, since: float | None) -> NoticeSource:
        """Where this backend's termination notices come from (see ``wait_for_termination``)."""
        return self.settings().notice_source(since=since)

    @abstractmethod
    def open_backend(self, *, step_key: str) -> AbstractContextManager[Backend]:
        """A context manager yielding a live :class:`Backend` for one step."""


class LocalBackendBlock(SpotBackendBlock, settings_fields(LocalSettings)):  # type: ignore[misc]
    """Run spot steps on this machine: real subprocesses and a simulated spot market.

    Steps run on the local spot cloud of ``state_dir`` (one daemon per directory, shared by
    every flow run, worker and process; started on first use): jobs outlive the flow run that
    submitted them, so a retry of the step, in this process or another, re-attaches to its jobs.
    The market is per step. Choose at most one market: a schedule of reclaims (with optional
    windows without spot capacity), a Poisson process, or a trace.

    Example:
        ```python
        from spot_workflows.prefect import LocalBackendBlock

        backend = LocalBackendBlock.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Spot Workflows Local Backend"
    _documentation_url = DOCS_URL
    settings_model = LocalSettings

    def settings(self) -> LocalSettings:
        return super().settings()  # type: ignore[return-value]

    def default_checkpoint_root(self) -> str:
        return f"file://{spot_workflows_home() / 'checkpoints'}"

    def cloud_state_dir(self) -> Path:
        """The local spot cloud's state directory (one daemon per directory)."""
        return self.settings().cloud_state_dir()

    def step_state_dir(self, step_key: str) -> Path:
        """Kept for compatibility: every step of a block shares its cloud's state directory."""
        return self.cloud_state_dir()

    def make_market(self) -> Any:
        return self.settings().make_market()

    @contextmanager
    def open_backend(self, *, step_key: str) -> Iterator[Backend]:
        with self.settings().build_backend() as backend:
            yield backend
