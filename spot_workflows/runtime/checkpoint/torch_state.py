"""PyTorch adapter: everything a training run needs to resume bit-identically, as one state tree.

::

    from spot_workflows.runtime.checkpoint.torch_state import restore_training_state, training_state

    def state():
        return training_state(model=model, optimizer=opt, scheduler=sched, scaler=scaler,
                              step=step, loader_position={"epoch": epoch, "batch": batch})

    restored = ckpt.restore(map_location="cuda:0")        # or "cpu", or {"cuda:0": "cuda:1"}
    if restored:
        progress = restore_training_state(restored.state, model=model, optimizer=opt,
                                          scheduler=sched, scaler=scaler)
        step, position = progress.step, progress.loader_position

The tree holds the ``state_dict()`` of the model, optimizer, LR scheduler and grad scaler (each may
also be a ``{name: object}`` mapping for several of them), the random-number generator states
(Python ``random``, numpy's global generator, torch CPU and every CUDA device), the step, the
data-loader position (any JSON-able value you choose, e.g. epoch and batches consumed) and
``extra`` (anything :mod:`state_tree` can store). Restoring onto another device works through the
loader's ``map_location``: ``load_state_dict`` then copies into wherever the model lives now.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spot_workflows.errors import CheckpointError

KIND = "spot_workflows.torch_training_state"
VERSION = 1


@dataclass(frozen=True)
class TrainingProgress:
    """What :func:`restore_training_state` hands back for the loop itself."""

    step: int | None
    loader_position: Any
    extra: Any


def rng_states() -> dict[str, Any]:
    """The states of every random-number generator training draws from."""
    import torch

    out: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = sys.modules.get("numpy")
    if np is not None:
        out["numpy"] = np.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Put back the generator states :func:`rng_states` captured (CUDA: as many devices as
    both the saving and this machine have)."""
    import torch

    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in states:
        torch.set_rng_state(states["torch"].to("cpu", torch.uint8))
    if "numpy" in states:
        import numpy as np

        np.random.set_state(tuple(states["numpy"]))
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for device, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.to("cpu", torch.uint8), device)


def _state_dicts(obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return {"$named": {name: o.state_dict() for name, o in obj.items()}}
    return obj.state_dict()


def _load(obj: Any, saved: Any, what: str, **kw: Any) -> None:
    if obj is None:
        return
    if saved is None:
        raise CheckpointError(f"the checkpoint holds no {what} state, but a {what} was given")
    if isinstance(obj, Mapping):
        named = saved.get("$named") if isinstance(saved, dict) else None
        if named is None or set(named) != set(obj):
            have = sorted(named) if named else "one unnamed"
            raise CheckpointError(f"checkpoint {what} states are {have}, given {sorted(obj)}")
        for name, o in obj.items():
            o.load_state_dict(named[name], **kw)
    else:
        o = obj.load_state_dict(saved, **kw)
        missing = getattr(o, "missing_keys", None)
        if missing:  # only reached with strict=False
            raise CheckpointError(f"{what} keys missing from the checkpoint: {missing[:5]}")


def training_state(
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    step: int | None = None,
    loader_position: Any = None,
    extra: Any = None,
    rng: bool = True,
) -> dict[str, Any]:
    """A state tree for :class:`AsyncCheckpointer` (tensors are not copied here: the snapshot
    copies them into host memory)."""
    return {
        "kind": KIND,
        "version": VERSION,
        "model": _state_dicts(model),
        "optimizer": _state_dicts(optimizer),
        "scheduler": _state_dicts(scheduler),
        "scaler": _state_dicts(scaler),
        "rng": rng_states() if rng else None,
        "step": step,
        "loader_position": loader_position,
        "extra": extra,
    }


def restore_training_state(
    state: Mapping[str, Any],
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    rng: bool = True,
    strict: bool = True,
) -> TrainingProgress:
    """Load a :func:`training_state` tree into the given objects (and the RNGs); returns the
    step, data-loader position and extra. Restore the model before building the optimizer's
    state (as usual: ``load_state_dict`` on the optimizer casts its state to the params' device)."""
    if not isinstance(state, Mapping) or state.get("kind") != KIND:
        raise CheckpointError("not a training state saved with torch_state.training_state()")
    if state.get("version") != VERSION:
        raise CheckpointError(f"training state version {state.get('version')} is not {VERSION}")
    _load(model, state["model"], "model", strict=strict)
    _load(optimizer, state["optimizer"], "optimizer")
    _load(scheduler, state["scheduler"], "scheduler")
    _load(scaler, state["scaler"], "grad scaler")
    if rng and state.get("rng"):
        set_rng_states(state["rng"])
    return TrainingProgress(state["step"], state["loader_position"], state["extra"])
