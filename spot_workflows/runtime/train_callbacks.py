"""Thin Lightning and Hugging Face ``Trainer`` callbacks over an :class:`AsyncCheckpointer`.

Neither package is a dependency: each factory imports its framework when called and raises a
:class:`ConfigError` naming the package to install when it is missing.

What they do: at the start of training, restore the model, optimizer(s), scheduler(s) and RNG
states from the newest checkpoint (tensors onto the model's device); after every optimizer step,
save on the checkpointer's cadence (snapshot + background write); on SIGTERM or a termination
notice, flush the newest state (the emergency save, timed against the notice deadline) and ask the
trainer to stop. The step numbers they save continue from the restored checkpoint's step.

What they do not do: restore the framework's own loop counters or skip the batches already seen in
the current epoch; the restored epoch restarts from its first batch. Exit with
``ckpt.exit_preempted()`` after ``fit()``/``train()`` returns when ``ckpt.stop_requested``.
"""

from __future__ import annotations

import logging
from typing import Any

from spot_workflows.errors import ConfigError
from spot_workflows.runtime.async_checkpoint import AsyncCheckpointer, State
from spot_workflows.runtime.torch_state import restore_training_state, training_state

log = logging.getLogger("spot_workflows.checkpoint")


def after_train_step(
    ckpt: AsyncCheckpointer, step: int, state: State, *, progress: float | None = None
) -> bool:
    """The per-step logic both callbacks share; True means: stop training now (an emergency
    save was made)."""
    if ckpt.stop_requested:
        report = ckpt.emergency_save(step, state, progress=progress)
        log.info("emergency checkpoint step %d: %s", step, report.model_dump_json())
        return True
    ckpt.maybe_save(step, state, progress=progress)
    return False


def restore_start_step(ckpt: AsyncCheckpointer, *, device: Any, **objects: Any) -> int:
    """Restore ``objects`` (model=, optimizer=, scheduler=, ...) from the newest checkpoint onto
    ``device``; returns the step it was saved at (0 without a checkpoint)."""
    restored = ckpt.restore(map_location=device)
    if restored is None:
        return 0
    progress = restore_training_state(restored.state, **objects)
    return int(progress.step if progress.step is not None else restored.step)


def _named(items: Any) -> dict[str, Any] | None:
    items = [i for i in (items or []) if i is not None]
    return {str(i): o for i, o in enumerate(items)} or None


def lightning_callback(ckpt: AsyncCheckpointer, *, total_steps: int | None = None) -> Any:
    """A ``lightning.pytorch.Callback`` (or ``pytorch_lightning``) that checkpoints through
    ``ckpt``; ``total_steps`` lets manifests carry progress."""
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:
            raise ConfigError("lightning_callback needs Lightning: pip install lightning") from None

    class SpotCheckpointCallback(Callback):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.start_step = 0

        def _objects(self, trainer: Any, module: Any) -> dict[str, Any]:
            scheds = [c.scheduler for c in getattr(trainer, "lr_scheduler_configs", [])]
            return {
                "model": module,
                "optimizer": _named(trainer.optimizers),
                "scheduler": _named(scheds),
            }

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            objects = self._objects(trainer, pl_module)
            self.start_step = restore_start_step(ckpt, device=pl_module.device, **objects)

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            step = self.start_step + trainer.global_step
            position = {"epoch": trainer.current_epoch, "batch": batch_idx + 1}

            def state() -> Any:
                objects = self._objects(trainer, pl_module)
                return training_state(step=step, loader_position=position, **objects)

            progress = min(1.0, step / total_steps) if total_steps else None
            if after_train_step(ckpt, step, state, progress=progress):
                trainer.should_stop = True

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

    class SpotCheckpointCallback(TrainerCallback):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.start_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw.get("model")
            objects = {
                "model": model,
                "optimizer": kw.get("optimizer"),
                "scheduler": kw.get("lr_scheduler"),
            }
            device = next(model.parameters()).device if model is not None else "cpu"
            self.start_step = restore_start_step(ckpt, device=device, **objects)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            step = self.start_step + state.global_step

            def tree() -> Any:
                return training_state(
                    model=kw.get("model"),
                    optimizer=kw.get("optimizer"),
                    scheduler=kw.get("lr_scheduler"),
                    step=step,
                    loader_position={"epoch": state.epoch},
                )

            total = self.start_step + state.max_steps if state.max_steps else 0
            progress = min(1.0, step / total) if total else None
            if after_train_step(ckpt, step, tree, progress=progress):
                control.should_training_stop = True
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ckpt.flush()

    return SpotCheckpointCallback()
