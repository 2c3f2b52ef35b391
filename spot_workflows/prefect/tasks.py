"""Run a step on spot capacity as a Prefect task.

The task carries out the planner's decisions through :class:`~spot_workflows.runner.StepRunner`
(submit -> watch -> decide), emits Prefect events and publishes the ledger as an artifact.

Retries: the step key is stable across Prefect task retries and flow-run retries (it is derived
from the flow run id, the step name and the call's position in the flow, or given by you), and
the ledger lives next to the checkpoints under that key. A retry therefore re-attaches to the live
attempt instead of submitting a duplicate, resumes from the last checkpoint, and returns at once
when the step already succeeded. Prefect ``retries`` cover failures of the orchestration (a crash,
an API blip); a step the planner gave up on (:class:`~spot_workflows.errors.StepFailedError`) is
not retried by Prefect: its budgets live in the spot policy.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Generic, ParamSpec

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from pydantic import BaseModel, ValidationError

from spot_workflows.backends.base import Backend
from spot_workflows.config import SpotPolicy, StepSpec, validate_step_key
from spot_workflows.core.outcomes import Attempt, Capacity
from spot_workflows.core.summary import StepSummary
from spot_workflows.errors import ConfigError, StepFailedError, config_error
from spot_workflows.prefect.artifacts import publish_step_artifact
from spot_workflows.prefect.blocks import SpotBackendBlock, SpotPolicyBlock
from spot_workflows.prefect.events import StepEventEmitter
from spot_workflows.prefect.options import StepOptions
from spot_workflows.runner import RunnerEvent, StepRunner, market_probe

P = ParamSpec("P")
BackendLike = SpotBackendBlock | Backend
PolicyLike = SpotPolicyBlock | SpotPolicy | None
_SLUG = re.compile(r"[^A-Za-z0-9-]+")


class SpotStepResult(BaseModel):
    """What a spot step returns to the flow."""

    step_key: str
    checkpoint_uri: str
    backend: str
    attempts: list[Attempt]

    @property
    def summary(self) -> StepSummary:
        return StepSummary.of(self.step_key, self.attempts)

    @property
    def final_capacity(self) -> Capacity:
        return self.attempts[-1].capacity

    @property
    def preemptions(self) -> int:
        return self.summary.preemptions

    @property
    def escalated(self) -> bool:
        return self.summary.escalated


# -- step keys ---------------------------------------------------------------------------------
_calls: dict[tuple[str, int], dict[str, int]] = {}
_calls_lock = threading.Lock()


def _slug(text: str, limit: int) -> str:
    return _SLUG.sub("-", text).strip("-")[:limit].strip("-") or "step"


def derive_step_key(*, name: str, key: str | None = None) -> str:
    """The step key: ``key`` if given, else ``<flow>-<name>-<n>-<flow run id>``.

    ``n`` counts calls of steps named ``name`` in this run of the flow function, so it is the same
    on a flow-run retry (the flow function runs again from the top) as long as the flow calls its
    steps in a deterministic order. Outside a flow run there is nothing stable to derive it from,
    so ``key`` is required.
    """
    if key is not None:
        try:
            return validate_step_key(key)
        except ValueError as exc:
            raise ConfigError(f"key: {exc}") from None
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        raise ConfigError(
            f"spot step {name!r} runs outside a flow run, so no stable step key can be derived: "
            "pass key='...' (the same key re-attaches to the same ledger and checkpoints)"
        )
    flow_run = ctx.flow_run
    with _calls_lock:
        counts = _calls.setdefault((str(flow_run.id), flow_run.run_count), {})
        index = counts.get(name, 0)
        counts[name] = index + 1
    flow_name = ctx.flow.name if ctx.flow is not None else "flow"
    return f"{_slug(flow_name, 40)}-{_slug(name, 60)}-{index}-{flow_run.id.hex}"


# -- the task ----------------------------------------------------------------------------------
def resolve_policy(policy: PolicyLike) -> SpotPolicy:
    if policy is None:
        return SpotPolicy()
    if isinstance(policy, SpotPolicyBlock):
        return policy.to_policy()
    if isinstance(policy, SpotPolicy):
        return policy
    raise ConfigError(
        f"policy must be a SpotPolicyBlock or a SpotPolicy, got {type(policy).__name__}"
    )


def open_backend(backend: BackendLike, *, step_key: str) -> AbstractContextManager[Backend]:
    """A live backend for one step: opened (and closed) from a block, or yours as it is."""
    if isinstance(backend, SpotBackendBlock):
        return backend.open_backend(step_key=step_key)
    if isinstance(backend, Backend):
        return nullcontext(backend)
    raise ConfigError(
        "backend must be a spot-workflows backend block (LocalBackendBlock, AwsBatchBackendBlock, "
        f"GcpBatchBackendBlock) or a Backend object, got {type(backend).__name__}"
    )


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("spot_workflows.prefect")


@contextmanager
def _artifact_on_exit(
    runner: StepRunner, *, backend: str, enabled: bool, logger: Any
) -> Iterator[None]:
    status = "interrupted"
    try:
        yield
        status = "succeeded"
    except StepFailedError as exc:
        status = f"failed: {exc.reason}"
        raise
    except BaseException as exc:
        status = f"interrupted: {type(exc).__name__}: {exc}"
        raise
    finally:
        if enabled:
            try:
                publish_step_artifact(
                    step_key=runner.spec.key,
                    checkpoint_uri=runner.spec.checkpoint_uri,
                    backend=backend,
                    attempts=runner.ledger.attempts,
                    status=status,
                )
            except Exception:  # the artifact must never hide the step's own outcome
                logger.warning("could not publish the ledger artifact", exc_info=True)


def execute_step(
    *,
    spec: StepSpec,
    backend: BackendLike,
    policy: PolicyLike = None,
    poll_interval: float = 1.0,
    on_event: Callable[[RunnerEvent], None] | None = None,
    artifact: bool = True,
) -> SpotStepResult:
    """Run ``spec`` to a final decision; the body of :func:`spot_step` (usable without a task)."""
    logger = _logger()
    resolved = resolve_policy(policy)
    with open_backend(backend, step_key=spec.key) as live:
        emitter = StepEventEmitter(
            step_key=spec.key, backend=live.name, checkpoint_uri=spec.checkpoint_uri
        )

        def handle(event: RunnerEvent) -> None:
            logger.info("spot step %s: %s: %s", event.step_key, event.kind, event.message)
            emitter(event)
            if on_event is not None:
                on_event(event)

        store = (
            backend.checkpoint_store(spec.checkpoint_uri)
            if isinstance(backend, SpotBackendBlock)
            else None
        )
        runner = StepRunner(
            spec=spec,
            backend=live,
            policy=resolved,
            store=store,
            poll_interval=poll_interval,
            on_event=handle,
            spot_probe=market_probe(live, spec.key),  # local market: may go back to SPOT
        )
        with _artifact_on_exit(runner, backend=live.name, enabled=artifact, logger=logger):
            result = runner.run()
    return SpotStepResult(
        step_key=spec.key,
        checkpoint_uri=spec.checkpoint_uri,
        backend=live.name,
        attempts=result.attempts,
    )


def _retry_unless_the_planner_gave_up(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retries re-attach after crashes; a planner FAIL is final (budgets are spent)."""
    return not isinstance(state.data, StepFailedError)


@task(
    name="spot-step",
    cache_policy=NO_CACHE,
    retry_condition_fn=_retry_unless_the_planner_gave_up,
)
def spot_step(
    *,
    spec: StepSpec,
    backend: BackendLike,
    policy: PolicyLike = None,
    poll_interval: float = 1.0,
    on_event: Callable[[RunnerEvent], None] | None = None,
    artifact: bool = True,
) -> SpotStepResult:
    """Prefect task: run one step on spot capacity with the spot policy (see module docs)."""
    return execute_step(
        spec=spec,
        backend=backend,
        policy=policy,
        poll_interval=poll_interval,
        on_event=on_event,
        artifact=artifact,
    )


# -- helpers for flows -------------------------------------------------------------------------
def build_spec(
    *,
    produced: Sequence[str] | Mapping[str, Any],
    key: str,
    backend: BackendLike,
    step_fields: Mapping[str, Any],
) -> StepSpec:
    """A StepSpec from a command (or a mapping of StepSpec fields) plus the step's defaults."""
    if isinstance(produced, Mapping):
        fields = {**step_fields, **produced}
    elif isinstance(produced, Sequence) and not isinstance(produced, str | bytes):
        fields = {**step_fields, "command": [str(part) for part in produced]}
    else:
        raise ConfigError(
            "a spot step must produce its command as a list of strings (or a mapping of "
            f"StepSpec fields), got {type(produced).__name__}"
        )
    fields["key"] = key
    if "checkpoint_uri" not in fields:
        if not isinstance(backend, SpotBackendBlock):
            raise ConfigError(
                "checkpoint_uri is required when backend is a Backend object rather than a block "
                "(a block derives it from its checkpoint_root)"
            )
        fields["checkpoint_uri"] = backend.checkpoint_uri_for(key)
    try:
        return StepSpec(**fields)
    except ConfigError:  # already one line naming the field
        raise
    except ValidationError as exc:
        raise config_error(exc, f"step {key!r}") from None


class SpotTask(Generic[P]):
    """A function that builds a step's command, bound to a backend and a policy.

    Calling it inside a flow runs the step as a Prefect task named after the function and returns
    a :class:`SpotStepResult`; ``.submit(...)`` returns a Prefect future instead. The function
    itself runs in the flow when called: it should only build the command (a list of strings) or
    a mapping of :class:`~spot_workflows.StepSpec` fields. Keyword arguments: the
    :class:`StepOptions` (``backend``, ``policy``, ``name``, ``key``, ``retries``, ...), or
    ``options=StepOptions(...)``; ``step_fields``: StepSpec defaults.
    """

    def __init__(
        self,
        fn: Callable[P, Sequence[str] | Mapping[str, Any]],
        *,
        options: StepOptions | None = None,
        step_fields: Mapping[str, Any] | None = None,
        **option_kwargs: Any,
    ) -> None:
        if options is None:
            options = StepOptions(**option_kwargs)
        elif option_kwargs:
            raise ConfigError(f"pass options= or {', '.join(option_kwargs)}, not both")
        self.fn = fn
        self.options = options
        self.name = options.name or getattr(fn, "__name__", "spot-step")
        self.step_fields = dict(step_fields or {})
        self.task = spot_step.with_options(**options.task_options(self.name))
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def _call_kwargs(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        opts = self.options
        key = derive_step_key(name=self.name, key=opts.key)
        spec = build_spec(
            produced=self.fn(*args, **kwargs),
            key=key,
            backend=opts.backend,
            step_fields=self.step_fields,
        )
        return {
            "spec": spec,
            "backend": opts.backend,
            "policy": opts.policy,
            "poll_interval": opts.poll_interval,
            "on_event": opts.on_event,
            "artifact": opts.artifact,
        }

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> SpotStepResult:
        return self.task(**self._call_kwargs(*args, **kwargs))

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> PrefectFuture[SpotStepResult]:
        return self.task.submit(**self._call_kwargs(*args, **kwargs))


def spot_task(
    *, backend: BackendLike, policy: PolicyLike = None, **kwargs: Any
) -> Callable[[Callable[P, Sequence[str] | Mapping[str, Any]]], SpotTask[P]]:
    """Decorator: the function returns the step's command; calling it runs the step on spot.

    Keyword arguments are the :class:`StepOptions` (``name``, ``key``, ``retries``,
    ``retry_delay_seconds``, ``tags``, ``poll_interval``, ``on_event``, ``artifact``); every
    other keyword is a :class:`~spot_workflows.StepSpec` field (``gpus``, ``image``, ``env``,
    ``checkpoint_uri``, ...) used unless the function's mapping overrides it. Bad options fail
    here, when the flow is defined.
    """
    options, step_fields = StepOptions.split(backend=backend, policy=policy, **kwargs)

    def wrap(fn: Callable[P, Sequence[str] | Mapping[str, Any]]) -> SpotTask[P]:
        return SpotTask(fn, options=options, step_fields=step_fields)

    return wrap


def run_spot_step(
    *,
    command: Sequence[str],
    backend: BackendLike,
    policy: PolicyLike = None,
    name: str = "spot-step",
    **kwargs: Any,
) -> SpotStepResult:
    """Run ``command`` as a spot step now (a Prefect task run when called inside a flow).
    Keyword arguments as for :func:`spot_task`."""
    options, step_fields = StepOptions.split(backend=backend, policy=policy, name=name, **kwargs)
    command = list(command)
    return SpotTask(lambda: command, options=options, step_fields=step_fields)()
