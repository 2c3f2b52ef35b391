"""The Lightning and Hugging Face ``Trainer`` callbacks against the real frameworks: tiny CPU runs
that save on the checkpointer's cadence, stop with an emergency save on a termination notice (or a
real SIGTERM), and resume from that checkpoint in a second trainer built like the first (same
``max_steps``: the retried attempt of the same step).

``SPOT_TEST_DEVICE=cuda`` runs the same tests with the trainers on a GPU (the CUDA path of the torch
adapter: pinned snapshots on a side stream, restore onto the device); they skip without one."""

from __future__ import annotations

import copy
import os
import signal
import warnings
from datetime import UTC, datetime, timedelta

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra 'torch')")

from spot_workflows.core.outcomes import (  # noqa: E402
    RESERVED_EXIT_CODE,
    NoticeKind,
    TerminationNotice,
)
from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer  # noqa: E402
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer  # noqa: E402
from spot_workflows.runtime.checkpoint.torch_state import restore_training_state  # noqa: E402
from spot_workflows.runtime.checkpoint.train_callbacks import (  # noqa: E402
    hf_trainer_callback,
    lightning_callback,
)
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore  # noqa: E402

DEVICE = os.environ.get("SPOT_TEST_DEVICE", "cpu")
ON_GPU = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        ON_GPU and not torch.cuda.is_available(), reason="SPOT_TEST_DEVICE=cuda needs a GPU"
    ),
]

SAMPLES, BATCH, FEATURES = 32, 4, 6  # 8 batches an epoch
EVERY = 3  # the checkpointer's cadence, in optimizer steps
TOTAL = 14  # max_steps of every trainer
STOP_AT = 10  # the step after which the termination notice arrives: epoch 1, 2 batches in
LR = 1e-2
# the cadence saves and the emergency save; the emergency save abandons a write still in flight
# (step 9's, when its background write has not finished): the newest state supersedes it
STOPPED_STEPS = ([3, 6, 9, STOP_AT], [3, 6, STOP_AT])


def make_ckpt(tmp_path, *, handle_signals: bool = False, **kw) -> AsyncCheckpointer:
    store = CheckpointStore((tmp_path / "ckpt").as_uri(), keep_last=10)
    every_steps = kw.pop("every_steps", None if "every_seconds" in kw else EVERY)
    checkpointer = Checkpointer(
        store,
        handle_signals=handle_signals,
        every_steps=every_steps,
        every_seconds=kw.pop("every_seconds", None),
    )
    return AsyncCheckpointer(checkpointer, **kw)


def notice() -> TerminationNotice:
    deadline = datetime.now(UTC) + timedelta(minutes=2)
    return TerminationNotice(kind=NoticeKind.INTERRUPTION, source="local", deadline=deadline)


def stop(ckpt: AsyncCheckpointer, how: str) -> None:
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this (the main) thread
    else:
        ckpt.checkpointer.request_stop(notice())


def data() -> tuple:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    return x, x.sum(dim=1, keepdim=True).sin()


def net(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def params(model) -> list:
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b) -> None:
    """Equal nested dicts/lists of tensors and scalars (state dicts, parameter lists)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a.cpu(), b.cpu())
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def newest(ckpt: AsyncCheckpointer, step: int):
    restored = ckpt.restore(map_location="cpu")
    assert restored is not None and restored.step == step
    return restored


class Snapshots:
    """What a recorder callback keeps: after each step, and at the start of training."""

    def __init__(self) -> None:
        self.at: dict[int, dict] = {}
        self.start: dict | None = None
        self.epochs: list[int] = []

    @staticmethod
    def take(model, opt, sched) -> dict:
        return {
            "params": params(model),
            "optimizer": copy.deepcopy(opt.state_dict()),
            "scheduler": copy.deepcopy(sched.state_dict()),
            "lr": sched.get_last_lr(),
        }


# -- Lightning ------------------------------------------------------------------------------------


@pytest.fixture
def pl():
    pl = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed")
    with warnings.catch_warnings():
        # a CPU run on a tiny in-memory data set: Lightning's advice on workers does not apply
        warnings.filterwarnings("ignore", message=".*num_workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings(
            "ignore", message=".*`validation_step` but have no `val_dataloader`"
        )
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        yield pl


def lightning_module(pl, seed: int):
    """A tiny LightningModule: AdamW and a one-cycle schedule sized by the trainer's max_steps
    (it raises when stepped past them: a resume that does not count the restored steps fails)."""

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net(seed)
            self.validated: list[int] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, batch_idx):  # runs only where a test passes val data
            self.validated.append(self.trainer.global_step)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=LR)
            total = self.trainer.estimated_stepping_batches
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Tiny()


def loader():
    x, y = data()
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False)


def lightning_trainer(pl, callbacks, max_steps: int = TOTAL, **kw):
    return pl.Trainer(
        accelerator="gpu" if ON_GPU else "cpu",
        devices=1,
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        **kw,
    )


def lightning_recorder(pl, *, stop_at: int | None = None, ckpt=None, how: str = "notice"):
    """Snapshots after each optimizer step and at the start of training; a stop request (a
    notice or a real SIGTERM) after step ``stop_at``."""

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.snaps = Snapshots()

        def _take(self, trainer, module) -> dict:
            sched = trainer.lr_scheduler_configs[0].scheduler
            return Snapshots.take(module, trainer.optimizers[0], sched)

        def on_train_start(self, trainer, pl_module) -> None:
            self.snaps.start = self._take(trainer, pl_module)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.snaps.epochs.append(trainer.current_epoch)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.snaps.at[trainer.global_step] = self._take(trainer, pl_module)
            if trainer.global_step == stop_at and not ckpt.stop_requested:
                stop(ckpt, how)

    return Recorder()


def test_lightning_callback_saves_on_cadence_and_the_checkpoint_restores(pl, tmp_path):
    ckpt = make_ckpt(tmp_path)
    model = lightning_module(pl, seed=0)
    rec = lightning_recorder(pl)
    trainer = lightning_trainer(pl, [rec, lightning_callback(ckpt)])
    trainer.fit(model, loader())
    assert trainer.global_step == TOTAL and not ckpt.stop_requested
    assert ckpt.store.steps() == [3, 6, 9, 12]
    restored = newest(ckpt, 12)
    assert restored.progress == pytest.approx(12 / TOTAL)  # against the trainer's max_steps
    assert restored.state["loader_position"] == {"epoch": 1, "batch": 4}
    assert restored.manifest.metadata["emergency"] is False

    fresh = lightning_module(pl, seed=1)
    opt = torch.optim.AdamW(fresh.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=TOTAL)
    restore_training_state(
        restored.state, model=fresh, optimizer={"0": opt}, scheduler={"0": sched}
    )
    assert_same(Snapshots.take(fresh, opt, sched), rec.snaps.at[12])
    assert not all(
        torch.equal(a.cpu(), b.cpu())
        for a, b in zip(rec.snaps.at[12]["params"], params(model), strict=True)
    )
    ckpt.close()


def test_lightning_stops_with_an_emergency_save_and_a_second_trainer_resumes(pl, tmp_path):
    ckpt = make_ckpt(tmp_path)
    rec = lightning_recorder(pl, stop_at=STOP_AT, ckpt=ckpt)
    callback = lightning_callback(ckpt)
    trainer = lightning_trainer(pl, [rec, callback], limit_val_batches=1)
    model = lightning_module(pl, seed=0)
    trainer.fit(model, loader(), loader())
    assert ckpt.stop_requested
    assert trainer.global_step == STOP_AT  # stopped right after the notice, not at max_steps
    assert model.validated == [8]  # at the end of epoch 0; no validation on the way out
    assert callback.emergency_report.step == STOP_AT and callback.emergency_report.ok
    assert ckpt.store.steps() in STOPPED_STEPS
    restored = newest(ckpt, STOP_AT)
    assert restored.manifest.metadata["emergency"] is True
    assert restored.state["loader_position"] == {"epoch": 1, "batch": 2}
    ckpt.close()

    # the retried attempt: a fresh checkpointer, model (other initial weights) and trainer
    ckpt = make_ckpt(tmp_path)
    rec2 = lightning_recorder(pl)
    callback = lightning_callback(ckpt)
    trainer = lightning_trainer(pl, [callback, rec2])
    trainer.fit(lightning_module(pl, seed=1), loader())
    assert callback.start_step == STOP_AT
    assert_same(rec2.snaps.start, rec.snaps.at[STOP_AT])  # weights, optimizer, LR schedule
    # Lightning's counters continue: max_steps counts the restored steps, the interrupted
    # epoch restarts (from its first batch), and the one-cycle schedule ends where it should
    assert trainer.global_step == TOTAL and rec2.snaps.epochs == [1]
    assert sorted(rec2.snaps.at) == list(range(STOP_AT + 1, TOTAL + 1))
    reference = lightning_recorder(pl)
    lightning_trainer(pl, [reference]).fit(lightning_module(pl, seed=0), loader())
    for step in range(STOP_AT + 1, TOTAL + 1):
        assert rec2.snaps.at[step]["lr"] == reference.snaps.at[step]["lr"]
    assert ckpt.store.steps() in [steps + [STOP_AT + EVERY] for steps in STOPPED_STEPS]
    assert newest(ckpt, STOP_AT + EVERY).state["step"] == STOP_AT + EVERY
    ckpt.close()


@pytest.mark.parametrize("recorder_first", [True, False], ids=["sigterm-before", "sigterm-after"])
def test_lightning_on_a_real_sigterm_saves_and_exits_preempted(pl, tmp_path, recorder_first):
    """Lightning's own SIGTERM handler ends fit() with SIGTERMException (a SystemExit, exit 0);
    the callback saves (also when the signal came after it ran for that batch) and exits 75."""
    ckpt = make_ckpt(tmp_path, handle_signals=True)
    try:
        rec = lightning_recorder(pl, stop_at=STOP_AT, ckpt=ckpt, how="sigterm")
        callback = lightning_callback(ckpt)
        callbacks = [rec, callback] if recorder_first else [callback, rec]
        trainer = lightning_trainer(pl, callbacks)
        with pytest.raises(SystemExit) as exited:
            trainer.fit(lightning_module(pl, seed=0), loader())
        assert exited.value.code == RESERVED_EXIT_CODE
        assert trainer.received_sigterm and trainer.global_step == STOP_AT
        assert callback.emergency_report.step == STOP_AT and callback.emergency_report.ok
        restored = newest(ckpt, STOP_AT)
        assert restored.manifest.metadata["emergency"] is True
        assert restored.state["loader_position"] == {"epoch": 1, "batch": 2}
        assert_same(params(trainer.lightning_module), rec.snaps.at[STOP_AT]["params"])
    finally:
        ckpt.close()


def test_lightning_gradient_accumulation_saves_each_optimizer_step_once(pl, tmp_path):
    ckpt = make_ckpt(tmp_path, every_seconds=1e-9)  # the cadence asks for a save at every call
    saved = []
    save = ckpt.save
    ckpt.save = lambda step, *a, **kw: saved.append(step) or save(step, *a, **kw)

    class StopMidAccumulation(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 6:  # step 3 came with batch 5; batch 6 is half of step 4
                ckpt.checkpointer.request_stop(notice())

    callback = lightning_callback(ckpt)
    trainer = lightning_trainer(
        pl, [StopMidAccumulation(), callback], max_steps=8, accumulate_grad_batches=2
    )
    trainer.fit(lightning_module(pl, seed=0), loader())
    assert saved == [1, 2, 3]  # one save per optimizer step, none between them
    # the stop came mid-accumulation: the newest state is step 3's, already durable, and the
    # data position is the one of step 3 (batch 6's gradients are not in any checkpoint)
    assert trainer.global_step == 3 and callback.emergency_report.step == 3
    assert callback.emergency_report.ok
    assert newest(ckpt, 3).state["loader_position"] == {"epoch": 0, "batch": 6}
    ckpt.close()


# -- Hugging Face Trainer -------------------------------------------------------------------------


@pytest.fixture
def hf():
    hf = pytest.importorskip("transformers", reason="Hugging Face transformers is not installed")
    from transformers import Trainer, TrainingArguments  # noqa: F401  (the slow lazy import)

    return hf


class Regressor(torch.nn.Module):
    """A plain module the HF Trainer accepts: keyword inputs, a dict with the loss out."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.net = net(seed)

    def forward(self, x, labels=None):
        out = self.net(x)
        loss = None if labels is None else torch.nn.functional.mse_loss(out, labels)
        return {"loss": loss, "logits": out}


def hf_trainer(hf, tmp_path, model, callbacks, max_steps: int = TOTAL):
    x, y = data()
    rows = [{"x": x[i], "labels": y[i]} for i in range(SAMPLES)]
    args = hf.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=max_steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        lr_scheduler_type="linear",  # the default: decays to 0 at max_steps
        seed=0,
        use_cpu=not ON_GPU,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = hf.Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)
    trainer.remove_callback(hf.trainer_callback.PrinterCallback)  # no metrics on stdout
    return trainer


def hf_recorder(hf, *, stop_at: int | None = None, ckpt=None, how: str = "notice"):
    """Snapshots after each optimizer step and at the start of training; a stop request (a
    notice or a real SIGTERM) after step ``stop_at``."""

    class Recorder(hf.TrainerCallback):
        def __init__(self) -> None:
            self.snaps = Snapshots()

        def on_train_begin(self, args, state, control, model, optimizer, lr_scheduler, **kw):
            self.snaps.start = Snapshots.take(model, optimizer, lr_scheduler)
            self.start_step = state.global_step

        def on_step_end(self, args, state, control, model, optimizer, lr_scheduler, **kw):
            self.snaps.at[state.global_step] = Snapshots.take(model, optimizer, lr_scheduler)
            if state.global_step == stop_at and not ckpt.stop_requested:
                stop(ckpt, how)

    return Recorder()


def linear_lr(step: int) -> float:
    """HF's default schedule (no warm-up) after ``step`` steps of a ``TOTAL``-step run."""
    return pytest.approx(LR * (TOTAL - step) / TOTAL, rel=1e-9, abs=0)


def test_hf_callback_saves_on_cadence_and_the_checkpoint_restores(hf, tmp_path):
    ckpt = make_ckpt(tmp_path)
    model = Regressor(seed=0)
    rec = hf_recorder(hf)
    trainer = hf_trainer(hf, tmp_path, model, [rec, hf_trainer_callback(ckpt)])
    trainer.train()
    assert trainer.state.global_step == TOTAL and not ckpt.stop_requested
    assert ckpt.store.steps() == [3, 6, 9, 12]
    restored = newest(ckpt, 12)
    assert restored.progress == pytest.approx(12 / TOTAL)
    assert restored.manifest.metadata["emergency"] is False
    assert restored.state["scheduler"] is not None

    fresh = Regressor(seed=1)
    other = hf_trainer(hf, tmp_path, fresh, [])
    other.create_optimizer_and_scheduler(num_training_steps=TOTAL)  # HF's parameter groups
    opt, sched = other.optimizer, other.lr_scheduler
    restore_training_state(restored.state, model=fresh, optimizer=opt, scheduler=sched)
    assert_same(Snapshots.take(fresh, opt, sched), rec.snaps.at[12])
    assert not all(
        torch.equal(a.cpu(), b.cpu())
        for a, b in zip(rec.snaps.at[12]["params"], params(model), strict=True)
    )
    ckpt.close()


def test_hf_stops_with_an_emergency_save_and_a_second_trainer_resumes(hf, tmp_path):
    ckpt = make_ckpt(tmp_path)
    rec = hf_recorder(hf, stop_at=STOP_AT, ckpt=ckpt)
    callback = hf_trainer_callback(ckpt)
    trainer = hf_trainer(hf, tmp_path, Regressor(seed=0), [rec, callback])
    trainer.train()
    assert ckpt.stop_requested
    assert trainer.state.global_step == STOP_AT  # stopped right after the notice
    assert callback.emergency_report.step == STOP_AT and callback.emergency_report.ok
    assert ckpt.store.steps() in STOPPED_STEPS
    assert newest(ckpt, STOP_AT).manifest.metadata["emergency"] is True
    ckpt.close()

    ckpt = make_ckpt(tmp_path)
    rec2 = hf_recorder(hf)
    callback = hf_trainer_callback(ckpt)
    trainer = hf_trainer(hf, tmp_path, Regressor(seed=1), [callback, rec2])
    trainer.train()
    assert callback.start_step == STOP_AT
    assert_same(rec2.snaps.start, rec.snaps.at[STOP_AT])  # weights, optimizer, LR schedule
    # the Trainer's step counter continues: max_steps counts the restored steps and the linear
    # schedule (built for max_steps) reaches 0 at the last one, not before
    assert trainer.state.global_step == TOTAL
    assert sorted(rec2.snaps.at) == list(range(STOP_AT + 1, TOTAL + 1))
    for step in range(STOP_AT + 1, TOTAL + 1):
        assert rec2.snaps.at[step]["lr"] == [linear_lr(step)] * 2  # HF's two parameter groups
    assert ckpt.store.steps() in [steps + [STOP_AT + EVERY] for steps in STOPPED_STEPS]
    assert newest(ckpt, STOP_AT + EVERY).state["step"] == STOP_AT + EVERY
    ckpt.close()


def test_hf_on_a_real_sigterm_stops_and_the_run_exits_preempted(hf, tmp_path):
    ckpt = make_ckpt(tmp_path, handle_signals=True)
    try:
        rec = hf_recorder(hf, stop_at=STOP_AT, ckpt=ckpt, how="sigterm")
        callback = hf_trainer_callback(ckpt)
        trainer = hf_trainer(hf, tmp_path, Regressor(seed=0), [rec, callback])
        trainer.train()  # returns: the Trainer has no SIGTERM handling of its own
        assert ckpt.stop_requested and trainer.state.global_step == STOP_AT
        assert callback.emergency_report.step == STOP_AT and callback.emergency_report.ok
        assert_same(params(trainer.model), rec.snaps.at[STOP_AT]["params"])
        assert newest(ckpt, STOP_AT).manifest.metadata["emergency"] is True
        with pytest.raises(SystemExit) as exited:
            ckpt.exit_preempted()
        assert exited.value.code == RESERVED_EXIT_CODE
    finally:
        ckpt.close()
