"""The async checkpointer with PyTorch on CPU: a resumed run is bit-identical to an uninterrupted
one, tensors of every dtype/layout come back exactly, and a state saved from another device type
restores onto the CPU."""

from __future__ import annotations

import itertools
import json
import random

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra 'torch')")
np = pytest.importorskip("numpy")

from spot_workflows.errors import CheckpointError, ConfigError  # noqa: E402
from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer, load_state  # noqa: E402
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer  # noqa: E402
from spot_workflows.runtime.checkpoint.snapshot import INDEX  # noqa: E402
from spot_workflows.runtime.checkpoint.torch_state import (  # noqa: E402
    restore_training_state,
    rng_states,
    set_rng_states,
    training_state,
)
from spot_workflows.runtime.checkpoint.train_callbacks import (  # noqa: E402
    after_train_step,
    hf_trainer_callback,
    lightning_callback,
)
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore  # noqa: E402

EPOCHS, BATCHES, BATCH = 3, 8, 16
TOTAL = EPOCHS * BATCHES


def make_ckpt(tmp_path, **kw) -> AsyncCheckpointer:
    store = CheckpointStore((tmp_path / "ckpt").as_uri())
    every = kw.pop("every_steps", None)
    return AsyncCheckpointer(Checkpointer(store, handle_signals=False, every_steps=every), **kw)


class Run:
    """A small deterministic training run: dropout (torch RNG), numpy and Python noise, AdamW,
    a step LR schedule, a grad scaler, and a shuffled data loader seeded per epoch."""

    def __init__(self, init_seed: int) -> None:
        torch.manual_seed(init_seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1)
        )
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=5, gamma=0.7)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(BATCHES * BATCH, 12, generator=g)
        self.data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True).sin())
        self.step, self.epoch, self.batch = 0, 0, 0

    def loader(self, epoch: int):
        g = torch.Generator().manual_seed(100 + epoch)
        return torch.utils.data.DataLoader(self.data, batch_size=BATCH, shuffle=True, generator=g)

    def train_step(self, x, y) -> None:
        noise = float(np.random.standard_normal()) * 1e-3 + random.random() * 1e-3
        loss = torch.nn.functional.mse_loss(self.model(x), y) + noise
        self.opt.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1

    def state(self):
        return training_state(
            model=self.model,
            optimizer=self.opt,
            scheduler=self.sched,
            scaler=self.scaler,
            step=self.step,
            loader_position={"epoch": self.epoch, "batch": self.batch},
        )

    def restore(self, state) -> None:
        progress = restore_training_state(
            state, model=self.model, optimizer=self.opt, scheduler=self.sched, scaler=self.scaler
        )
        self.step = progress.step
        self.epoch, self.batch = (
            progress.loader_position["epoch"],
            progress.loader_position["batch"],
        )

    def train(self, until: int, ckpt: AsyncCheckpointer | None = None) -> None:
        while self.epoch < EPOCHS and self.step < until:
            batches = itertools.islice(self.loader(self.epoch), self.batch, None)
            for x, y in batches:
                self.train_step(x, y)
                self.batch += 1
                if ckpt is not None:
                    ckpt.maybe_save(self.step, self.state, progress=self.step / TOTAL)
                if self.step >= until:
                    return
            self.epoch, self.batch = self.epoch + 1, 0


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def fingerprint(run: Run) -> list:
    params = [p.detach().clone() for p in run.model.parameters()]
    moments = [t.clone() for s in run.opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return [run.step, run.sched.get_last_lr(), run.scaler.get_scale(), params, moments]


def assert_identical(a: list, b: list) -> None:
    assert a[:3] == b[:3]
    for x, y in zip(a[3] + a[4], b[3] + b[4], strict=True):
        assert torch.equal(x, y)


def test_a_run_resumed_after_a_reclaim_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    seed_everything(7)
    reference = Run(init_seed=0)
    reference.train(until=TOTAL)
    expected = fingerprint(reference)

    seed_everything(7)
    first = Run(init_seed=0)
    ckpt = make_ckpt(tmp_path, every_steps=5, policy="wait")
    first.train(until=13, ckpt=ckpt)  # checkpoints at 5 and 10; reclaimed at 13, mid-epoch
    ckpt.flush()
    ckpt.close()
    seed_everything(99)  # the new attempt starts in a fresh process: nothing carries over

    resumed = Run(init_seed=1)  # different initial weights: the checkpoint must overwrite them
    ckpt = make_ckpt(tmp_path, every_steps=5)
    restored = ckpt.restore()
    assert restored.step == 10 and restored.state["loader_position"] == {"epoch": 1, "batch": 2}
    resumed.restore(restored.state)
    resumed.train(until=TOTAL, ckpt=ckpt)
    ckpt.close()
    assert_identical(fingerprint(resumed), expected)
    assert not torch.equal(fingerprint(Run(init_seed=1))[3][0], expected[3][0])  # not trivial


def test_tensors_of_every_dtype_and_layout_come_back_exactly(tmp_path):
    base = torch.randn(6, 10)
    state = {
        "f32": base,
        "transposed": base.t(),  # not contiguous
        "slice": base[1:4, ::2],
        "bf16": base.to(torch.bfloat16),
        "f16": base.to(torch.float16),
        "f64": base.double(),
        "i8": torch.arange(-5, 5, dtype=torch.int8),
        "u8": torch.arange(0, 255, dtype=torch.uint8),
        "bool": base > 0,
        "c64": torch.complex(base, -base),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 3),
        "int64": torch.tensor([2**62, -(2**62)]),
        "param": torch.nn.Parameter(torch.ones(3)),
        "meta": {"dtype": torch.float16, "device": torch.device("cpu"), "size": torch.Size([2])},
    }
    ckpt = make_ckpt(tmp_path)
    ckpt.save(1, state).result()
    back = ckpt.restore().state
    for name, value in state.items():
        if torch.is_tensor(value):
            got = back[name]
            assert got.dtype == value.dtype and got.shape == value.shape, name
            assert torch.equal(got, value.detach()), name
    assert back["meta"] == {"dtype": torch.float16, "device": torch.device("cpu"), "size": (2,)}


def test_in_place_updates_after_save_do_not_reach_the_checkpoint(tmp_path, monkeypatch):
    from spot_workflows.runtime.store import bulk_io

    held = []
    real = bulk_io.write_local

    def slow(path, view, **kw):
        held.append(path)
        return real(path, view, **kw)

    monkeypatch.setattr(bulk_io, "write_local", slow)
    model = torch.nn.Linear(4, 4)
    ckpt = make_ckpt(tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    ticket = ckpt.save(1, lambda: training_state(model=model, rng=False))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the optimizer step right after save() returned
    ticket.result()
    fresh = torch.nn.Linear(4, 4)
    restore_training_state(ckpt.restore().state, model=fresh)
    for p, b in zip(fresh.parameters(), before, strict=True):
        assert torch.equal(p, b)


def cuda_copy_of(store: CheckpointStore, step: int) -> int:
    """Re-save checkpoint ``step`` as a GPU machine would have written it (same bytes, tensors
    recorded as coming from cuda:0): a checkpoint from another device type."""
    manifest = store.latest()
    files = {f.name: store.read_file(manifest, f.name) for f in manifest.files}
    index = json.loads(files[INDEX])
    for leaf in index["leaves"]:
        if leaf["kind"] == "torch":
            leaf["device"] = "cuda:0"
    files[INDEX] = json.dumps(index).encode()
    store.save(step, files, metadata=manifest.metadata)
    return step


def test_a_state_saved_from_a_gpu_restores_onto_the_cpu(tmp_path):
    model = torch.nn.Linear(3, 2)
    ckpt = make_ckpt(tmp_path)
    ckpt.save(1, training_state(model=model, rng=False)).result()
    cuda_copy_of(ckpt.store, 2)
    manifest = ckpt.store.latest()
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="map_location='cpu'"):
            load_state(ckpt.store, manifest)
    for where in ("cpu", {"cuda:0": "cpu"}, lambda saved: "cpu"):
        state = load_state(ckpt.store, manifest, map_location=where)
        fresh = torch.nn.Linear(3, 2)
        restore_training_state(state, model=fresh)
        assert all(t.device.type == "cpu" for t in state["model"].values())
        for p, q in zip(fresh.parameters(), model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_rng_states_round_trip():
    seed_everything(3)
    saved = rng_states()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    seed_everything(4)
    set_rng_states(saved)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_restoring_into_mismatched_objects_fails_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="training_state"):
        restore_training_state({"model": {}})
    state = training_state(model=torch.nn.Linear(2, 2), rng=False)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_training_state(state, optimizer=torch.optim.SGD([torch.ones(1)], lr=0.1))
    with pytest.raises(RuntimeError, match="size mismatch"):
        restore_training_state(state, model=torch.nn.Linear(3, 2))


def test_several_models_and_optimizers_by_name(tmp_path):
    nets = {"g": torch.nn.Linear(2, 2), "d": torch.nn.Linear(2, 1)}
    opts = {k: torch.optim.Adam(v.parameters()) for k, v in nets.items()}
    ckpt = make_ckpt(tmp_path)
    ckpt.save(1, training_state(model=nets, optimizer=opts)).result()
    fresh = {"g": torch.nn.Linear(2, 2), "d": torch.nn.Linear(2, 1)}
    restore_training_state(ckpt.restore().state, model=fresh)
    assert torch.equal(fresh["d"].weight, nets["d"].weight)
    with pytest.raises(CheckpointError, match="given"):
        restore_training_state(ckpt.restore().state, model={"g": fresh["g"]})


def test_the_callbacks_shared_step_logic_saves_on_cadence_and_flushes_on_stop(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = make_ckpt(tmp_path, every_steps=2)
    state = lambda: training_state(model=model)  # noqa: E731
    assert after_train_step(ckpt, 1, state) is False and ckpt.store.steps() == []
    assert after_train_step(ckpt, 2, state) is False
    ckpt.flush()
    ckpt.checkpointer.request_stop()
    assert after_train_step(ckpt, 3, state) is True
    assert ckpt.restore().manifest.metadata["emergency"] is True
    assert ckpt.store.steps() == [2, 3]


def test_framework_callbacks_say_what_to_install(tmp_path):
    ckpt = make_ckpt(tmp_path)
    for factory, package in (
        (lightning_callback, "lightning"),
        (hf_trainer_callback, "transformers"),
    ):
        try:
            __import__(package)
        except ImportError:
            with pytest.raises(ConfigError, match=f"pip install {package}"):
                factory(ckpt)
        else:
            assert factory(ckpt) is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_state_is_copied_through_pinned_buffers_on_a_side_stream(tmp_path):
    model = torch.nn.Linear(256, 256).cuda()
    ckpt = make_ckpt(tmp_path)
    expected = [p.detach().cpu().clone() for p in model.parameters()]
    ticket = ckpt.save(1, lambda: training_state(model=model))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)  # queued after the copy on the current stream
    ticket.result()
    assert ckpt.writer.pool._buffer.pinned
    state = ckpt.restore(map_location="cpu").state
    fresh = torch.nn.Linear(256, 256)
    restore_training_state(state, model=fresh, rng=False)
    for p, e in zip(fresh.parameters(), expected, strict=True):
        assert torch.equal(p, e)
    on_gpu = ckpt.restore().state  # back onto the device it came from
    assert all(t.is_cuda for t in on_gpu["model"].values())
