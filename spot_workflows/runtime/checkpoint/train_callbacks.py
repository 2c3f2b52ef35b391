"""Thin Lightning and Hugging Face ``Trainer`` callbacks over an :class:`AsyncCheckpointer`.

Neither package is a dependency: each factory imports its framework when called and raises a
:class:`ConfigError` naming the package to install when it is missing. Tested against the real
frameworks (Lightning 2.6, transformers 5.23 with accelerate) in
``tests/unit/test_train_callbacks_frameworks.py``.

What they do: at the start of training, restore the model, optimizer(s), scheduler(s) and RNG
states from the newest checkpoint (tensors onto the model's device) and set the framework's
optimizer-step counter (``global_step``) to the checkpoint's step, so ``max_steps`` and the LR
schedule count across attempts, as with the frameworks' own resume; Lightning's epoch counter is
restored too. After every optimizer step, save on the checkpointer's cadence (snapshot +
background write). On SIGTERM or a termination notice, flush the newest state (the emergency save,
timed against the notice deadline; its report is the callback's ``emergency_report``) and ask the
trainer to stop.

What they do not do: skip the batches already seen. Lightning restarts the interrupted epoch from
its first batch; the HF Trainer starts again from the first epoch's first batch (its epoch counter
is local to ``train()``). Exit with ``ckpt.exit_preempted()`` after ``fit()``/``train()`` returns
when ``ckpt.stop_requested``. On a real SIGTERM Lightning's own handler makes ``fit()`` raise
``SIGTERMException`` (a ``SystemExit``) instead of returning; the callback then makes sure the
emergency save was made and sets that exit's code to 75 (PREEMPTED) instead of 0.
"""

from __future__ import annotations

import logging
from typing import Any

from spot_workflows.core.outcomes import RESERVED_EXIT_CODE
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer, State
from spot_workflows.runtime.checkpoint.checkpointer import EmergencySaveReport
from spot_workflows.runtime.checkpoint.torch_state import (
    TrainingProgress,
    restore_training_state,
    training_state,
)

log = logging.getLogger("spot_workflows.checkpoint")


def _emergency(
    ckpt: AsyncCheckpointer, step: int, state: State, progress: float | None
) -> EmergencySaveReport:
    report = ckpt.emergency_save(step, state, progress=progress)
    log.info("emergency checkpoint step %d: %s", step, report.model_dump_json())
    return report


def after_train_step(
    ckpt: AsyncCheckpointer, step: int, state: State, *, progress: float | None = None
) -> bool:
    """The per-step logic both callbacks share; True means: stop training now (an emergency
    save was made)."""
    if ckpt.stop_requested:
        _emergency(ckpt, step, state, progress)
        return True
    ckpt.maybe_save(step, state, progress=progress)
    return False


def restore_progress(
    ckpt: AsyncCheckpointer, *, device: Any, **objects: Any
) -> TrainingProgress | None:
    """Restore ``objects`` (model=, optimizer=, scheduler=, ...) from the newest checkpoint onto
    ``device``; returns its step and loader position (None without a checkpoint)."""
    restored = ckpt.restore(map_location=device)
    if restored is None:
        return None
    progress = restore_training_state(restored.state, **objects)
    step = int(progress.step if progress.step is not None else restored.step)
    return TrainingProgress(step, progress.loader_position, progress.extra)


def _named(items: Any) -> dict[str, Any] | None:
    items = [i for i in (items or []) if i is not None]
    return {str(i): o for i, o in enumerate(items)} or None


class _Hooks:
    """What both callbacks do after a step: the cadence save, or the emergency save once per
    step after a stop request."""

    def __init__(self, ckpt: AsyncCheckpointer) -> None:
        self.ckpt = ckpt
        self.start_step = 0  # the step restored when training started (0: from scratch)
        self.emergency_report: EmergencySaveReport | None = None

    def _emergency_once(self, step: int, state: State, progress: float | None) -> None:
        if self.emergency_report is None or self.emergency_report.step != step:
            self.emergency_report = _emergency(self.ckpt, step, state, progress)

    def _step_end(self, step: int, state: State, progress: float | None) -> bool:
        """True: stop training now (the emergency save of ``step`` was made)."""
        if self.ckpt.stop_requested:
            self._emergency_once(step, state, progress)
            return True
        self.ckpt.maybe_save(step, state, progress=progress)
        return False


def _set_lightning_progress(trainer: Any, module: Any, progress: TrainingProgress) -> None:
    """Set Lightning's optimizer-step and epoch counters to a restored checkpoint's (what its own
    ``ckpt_path`` resume does through the loops' state dicts)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if module.automatic_optimization:
        steps = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
    else:
        steps = epoch_loop.manual_optimization.optim_step_progress.total
    steps.ready = steps.completed = progress.step
    epoch_loop._batches_that_stepped = progress.step  # the loggers' step
    position = progress.loader_position or {}
    epoch = int(position.get("epoch", 0))
    batch, batches = position.get("batch"), trainer.num_training_batches
    if batch is not None and batches != float("inf") and batch >= batches:
        epoch += 1  # saved after the epoch's last batch: the next epoch starts
    for counter in (trainer.fit_loop.epoch_progress.current, trainer.fit_loop.epoch_progress.total):
        counter.ready = counter.started = counter.processed = counter.completed = epoch


def lightning_callback(ckpt: AsyncCheckpointer, *, total_steps: int | None = None) -> Any:
    """A ``lightning.pytorch.Callback`` (or ``pytorch_lightning``) that checkpoints through
    ``ckpt``; manifests carry progress against ``total_steps`` (default: the trainer's
    ``max_steps`` when set)."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise ConfigError("lightning_callback needs Lightning: pip install lightning") from None

    class SpotCheckpointCallback(_Hooks, Callback):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(ckpt)
            self._last_step = -1
            self._position: dict[str, int] = {}

        def _objects(self, trainer: Any, module: Any) -> dict[str, Any]:
            scheds = [c.scheduler for c in getattr(trainer, "lr_scheduler_configs", [])]
            return {
                "model": module,
                "optimizer": _named(trainer.optimizers),
                "scheduler": _named(scheds),
            }

        def _state(self, trainer: Any, module: Any) -> Any:
            step, position = trainer.global_step, dict(self._position)
            return lambda: training_state(
                step=step, loader_position=position, **self._objects(trainer, module)
            )

        def _progress(self, trainer: Any) -> float | None:
            total = total_steps or (trainer.max_steps if (trainer.max_steps or 0) > 0 else None)
            return min(1.0, trainer.global_step / total) if total else None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            objects = self._objects(trainer, pl_module)
            progress = restore_progress(ckpt, device=pl_module.device, **objects)
            if progress is not None:
                self.start_step = progress.step
                self._position = dict(progress.loader_position or {})
                _set_lightning_progress(trainer, pl_module, progress)
            self._last_step = trainer.global_step

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            step = trainer.global_step
            if step != self._last_step:  # the batch that completed an optimizer step
                self._last_step = step
                self._position = {"epoch": trainer.current_epoch, "batch": batch_idx + 1}
            elif not ckpt.stop_requested:
                return  # accumulating gradients: nothing new to save
            if self._step_end(step, self._state(trainer, pl_module), self._progress(trainer)):
                trainer.should_stop = True
                trainer.limit_val_batches = 0  # no validation run on the way out

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            # Lightning's SIGTERM handler ends fit() with SIGTERMException, a SystemExit whose
            # code (None) would exit 0: make sure the newest state is saved, and exit PREEMPTED.
            if not ckpt.stop_requested or not isinstance(exception, SystemExit):
                return
            state = self._state(trainer, pl_module)
            self._emergency_once(trainer.global_step, state, self._progress(trainer))
            if exception.code in (None, 0):
                exception.code = RESERVED_EXIT_CODE

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            ckpt.flush()

    return SpotCheckpointCallback()


def hf_trainer_callback(ckpt: AsyncCheckpointer) -> Any:
    """A ``transformers.TrainerCallback`` that checkpoints through ``ckpt``."""
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ConfigError(
            "hf_trainer_callback needs Hugging Face transformers: pip install transformers"
        ) from None

    class SpotCheckpointCallback(_Hooks, TrainerCallback):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(ckpt)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw.get("model")
            objects = {
                "model": model,
                "optimizer": kw.get("optimizer"),
                "scheduler": kw.get("lr_scheduler"),
            }
            device = next(model.parameters()).device if model is not None else "cpu"
            progress = restore_progress(ckpt, device=device, **objects)
            if progress is not None:
                # what the Trainer's own resume does: max_steps and the LR schedule (built for
                # max_steps) then count the restored steps
                self.start_step = state.global_step = progress.step

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            step = state.global_step

            def tree() -> Any:
                return training_state(
                    model=kw.get("model"),
                    optimizer=kw.get("optimizer"),
                    scheduler=kw.get("lr_scheduler"),
                    step=step,
                    loader_position={"epoch": state.epoch},
                )

            progress = min(1.0, step / state.max_steps) if (state.max_steps or 0) > 0 else None
            if self._step_end(step, tree, progress):
                control.should_training_stop = True
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ckpt.flush()

    return SpotCheckpointCallback()
