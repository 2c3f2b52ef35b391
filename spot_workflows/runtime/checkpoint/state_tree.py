"""Split a training state into a JSON skeleton and a list of array leaves, and join them again.

A state is a tree of dicts, lists and tuples whose leaves are scalars (None, bool, int, float,
str) or arrays: ``torch.Tensor``, ``numpy.ndarray``, ``bytes``/``bytearray``/``memoryview``. The
async checkpointer copies the array leaves into host buffers and writes them as raw bytes; the
rest of the tree is this skeleton, plain JSON with a few ``$``-tags:

* ``{"$leaf": i}``: array leaf number ``i``;
* ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}`` (a dict with non-string keys, such as an
  optimizer state keyed by parameter index);
* ``{"$dtype": "float32"}``, ``{"$device": "cuda:0"}``, ``{"$np": ["<i8", 3]}`` (a numpy scalar);
* ``{"$pickle": "<base64>"}``: any other object, pickled. Loading it needs ``allow_pickle=True``,
  because unpickling runs code: only load checkpoints you wrote.

No torch or numpy import happens here unless the state holds such objects.
"""

from __future__ import annotations

import base64
import pickle
import sys
from typing import Any

from spot_workflows.errors import CheckpointError

_TAGS = ("$leaf", "$tuple", "$dict", "$dtype", "$device", "$np", "$pickle")


def _torch() -> Any:
    return sys.modules.get("torch")


def _numpy() -> Any:
    return sys.modules.get("numpy")


def is_leaf(value: object) -> bool:
    """True for the values stored as raw bytes: tensors, numpy arrays and byte strings."""
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    torch, np = _torch(), _numpy()
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    return np is not None and isinstance(value, np.ndarray)


def flatten(tree: Any) -> tuple[Any, list[Any]]:
    """(JSON-able skeleton, array leaves in the order the skeleton numbers them)."""
    leaves: list[Any] = []

    def enc(v: Any) -> Any:
        if v is None or isinstance(v, bool | int | float | str):
            return v
        if is_leaf(v):
            leaves.append(v)
            return {"$leaf": len(leaves) - 1}
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in v):
                return {k: enc(x) for k, x in v.items()}
            return {"$dict": [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if type(v) is tuple or _is_torch_size(v):  # a namedtuple is pickled (keeps its type)
            return {"$tuple": [enc(x) for x in v]}
        torch, np = _torch(), _numpy()
        if torch is not None and isinstance(v, torch.dtype):
            return {"$dtype": str(v).removeprefix("torch.")}
        if torch is not None and isinstance(v, torch.device):
            return {"$device": str(v)}
        if np is not None and isinstance(v, np.generic) and v.dtype.kind in "biuf":
            return {"$np": [v.dtype.str, v.item()]}
        try:
            blob = pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise CheckpointError(
                f"cannot checkpoint a {type(v).__name__}: it is not a tensor, array, bytes, "
                f"scalar or container, and it cannot be pickled ({exc}); convert it first"
            ) from exc
        return {"$pickle": base64.b64encode(blob).decode()}

    return enc(tree), leaves


def _is_torch_size(v: object) -> bool:
    torch = _torch()
    return torch is not None and isinstance(v, torch.Size)


def unflatten(skeleton: Any, leaves: list[Any], *, allow_pickle: bool = False) -> Any:
    """The tree :func:`flatten` split, with ``leaves`` (already rebuilt) put back in place."""

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        tag = next((t for t in _TAGS if t in v), None) if len(v) == 1 else None
        if tag is None:
            return {k: dec(x) for k, x in v.items()}
        body = v[tag]
        if tag == "$leaf":
            return leaves[body]
        if tag == "$tuple":
            return tuple(dec(x) for x in body)
        if tag == "$dict":
            return {_hashable(dec(k)): dec(x) for k, x in body}
        if tag == "$np":
            import numpy as np

            return np.dtype(body[0]).type(body[1])
        if tag == "$pickle":
            if not allow_pickle:
                raise CheckpointError(
                    "this checkpoint holds pickled objects; unpickling runs code, so load it "
                    "with allow_pickle=True only if you trust the checkpoint's origin"
                )
            return pickle.loads(base64.b64decode(body))
        import torch

        return getattr(torch, body) if tag == "$dtype" else torch.device(body)

    return dec(skeleton)


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
