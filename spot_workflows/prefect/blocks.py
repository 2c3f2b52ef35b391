"""Prefect blocks that configure spot steps: the spot policy and one backend block per kind.

Every block validates on construction (and on ``Block.load``): a bad value raises a pydantic
``ValidationError`` that names the field. Secrets are ``SecretStr`` and never appear in reprs,
logs or the Prefect UI. The blocks are registered through the ``prefect.collections`` entry point,
so a Prefect server that has spot-workflows installed lists them.
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
from typing import Annotated, Any

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from spot_workflows.backends.base import Backend
from spot_workflows.config import SpotPolicy, validate_checkpoint_uri
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.store import CheckpointStore

DOCS_URL = "https://github.com/spot-workflows/spot-workflows/blob/main/docs/prefect.md"
"""Where the blocks' documentation lives (the Prefect UI links it from each block type)."""

NonNegative = Annotated[float, Field(ge=0)]


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


class SpotBackendBlock(Block, ABC):
    """Where spot steps run and where their checkpoints and ledger live (interface)."""

    checkpoint_root: str | None = Field(
        default=None,
        description=(
            "Prefix under which each step gets its checkpoint directory "
            "(file://, s3:// or gs://); the step key is appended."
        ),
    )

    @field_validator("checkpoint_root")
    @classmethod
    def _checkpoint_root(cls, value: str | None) -> str | None:
        return None if value is None else validate_checkpoint_uri(value)

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

    @abstractmethod
    def open_backend(self, *, step_key: str) -> AbstractContextManager[Backend]:
        """A context manager yielding a live :class:`Backend` for one step."""


class LocalBackendBlock(SpotBackendBlock):
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

    state_dir: str | None = Field(
        default=None,
        description=(
            "State directory of the local spot cloud; defaults to $SPOT_WORKFLOWS_LOCAL_DIR, "
            "else ~/.spot-workflows/local."
        ),
    )
    reclaim_after_s: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=list,
        description=(
            "Scheduled market: the n-th spot attempt of a step is reclaimed this many seconds "
            "after it starts; later attempts are never reclaimed."
        ),
    )
    spot_unavailable: list[tuple[NonNegative, NonNegative]] = Field(
        default_factory=list,
        description="Scheduled market: (start, end) windows, in seconds, with no spot capacity.",
    )
    reclaim_after_checkpoint: bool = Field(
        default=False,
        description=(
            "Scheduled market: count reclaim_after_s from each attempt's first new checkpoint "
            "instead of its start (every reclaimed attempt has made progress, whatever the load)."
        ),
    )
    poisson_rate_per_hour: float | None = Field(
        default=None, gt=0, description="Poisson market: reclaims per hour of spot run time."
    )
    market_seed: int = Field(default=0, description="Seed of the Poisson market.")
    trace_path: str | None = Field(
        default=None, description="Trace market: path of an availability trace (JSON)."
    )
    trace_tick_s: float | None = Field(
        default=None, gt=0, description="Trace market: seconds each trace tick is replayed as."
    )
    notice_window_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between the termination notice and SIGTERM (AWS gives 120).",
    )
    grace_s: float = Field(default=5.0, ge=0, description="Seconds from SIGTERM to SIGKILL.")

    @field_validator("spot_unavailable")
    @classmethod
    def _windows(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for start, end in value:
            if end <= start:
                raise ValueError(f"window ({start}, {end}) must end after it starts")
        return value

    @model_validator(mode="after")
    def _one_market(self) -> LocalBackendBlock:
        chosen = [
            name
            for name, used in (
                ("reclaim_after_s/spot_unavailable", self.reclaim_after_s or self.spot_unavailable),
                ("poisson_rate_per_hour", self.poisson_rate_per_hour is not None),
                ("trace_path", self.trace_path is not None),
            )
            if used
        ]
        if len(chosen) > 1:
            raise ValueError(f"choose one spot market, not {' and '.join(chosen)}")
        return self

    def default_checkpoint_root(self) -> str:
        return f"file://{spot_workflows_home() / 'checkpoints'}"

    def cloud_state_dir(self) -> Path:
        """The local spot cloud's state directory (one daemon per directory)."""
        from spot_workflows.backends.local import default_state_dir

        return (
            Path(self.state_dir).expanduser().resolve() if self.state_dir else default_state_dir()
        )

    def step_state_dir(self, step_key: str) -> Path:
        """Kept for compatibility: every step of a block shares its cloud's state directory."""
        return self.cloud_state_dir()

    def make_market(self) -> Any:
        from spot_workflows.backends.local import market as local_market

        if self.poisson_rate_per_hour is not None:
            return local_market.PoissonMarket(
                rate_per_hour=self.poisson_rate_per_hour, seed=self.market_seed
            )
        if self.trace_path is not None:
            return local_market.TraceMarket.from_file(
                self.trace_path, tick_seconds=self.trace_tick_s
            )
        if self.reclaim_after_s or self.spot_unavailable:
            return local_market.ScheduledMarket(
                reclaims=tuple(self.reclaim_after_s),
                unavailable=tuple(self.spot_unavailable),
                after_checkpoint=self.reclaim_after_checkpoint,
            )
        return local_market.NeverReclaimed()

    @contextmanager
    def open_backend(self, *, step_key: str) -> Iterator[Backend]:
        from spot_workflows.backends.local import LocalBackend

        with LocalBackend(
            state_dir=self.cloud_state_dir(),
            market=self.make_market(),
            notice_window_s=self.notice_window_s,
            grace_s=self.grace_s,
        ) as backend:
            yield backend
