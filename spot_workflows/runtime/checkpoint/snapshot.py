"""Snapshot a training state into host memory, and rebuild a state from a saved snapshot.

On-disk format (``format: 1``), files of one checkpoint:

* ``state-000.bin``, ``state-001.bin``, ...: shards of raw leaf bytes, each leaf at a 64-byte
  aligned offset, each shard padded to 4 KiB (so it can be written with ``O_DIRECT``);
* ``state-index.json``: the skeleton (:mod:`state_tree`), and for every leaf its kind (``torch``,
  ``numpy``, ``bytes``), dtype, shape, source device, shard, offset and size.

The index is a small JSON file, so a checkpoint can be inspected without torch; every file is
listed with its size and checksum in the manifest like any other checkpoint file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from spot_workflows.errors import CheckpointError, ConfigError
from spot_workflows.runtime.checkpoint.host_buffers import HostBuffer, HostBufferPool, align_up
from spot_workflows.runtime.checkpoint.state_tree import flatten, unflatten

INDEX = "state-index.json"
FORMAT = 1
_LEAF_ALIGN = 64
MIN_SHARD = 64 * 1024 * 1024


def shard_name(i: int) -> str:
    return f"state-{i:03d}.bin"


@dataclass(frozen=True)
class LeafSpec:
    kind: str  # "torch" | "numpy" | "bytes"
    dtype: str
    shape: tuple[int, ...]
    device: str
    shard: int
    offset: int  # inside the shard
    nbytes: int


@dataclass(frozen=True)
class ShardSpec:
    name: str
    start: int  # offset of the shard in the host buffer (4 KiB aligned)
    nbytes: int  # padded to 4 KiB: the file's size


def _describe(leaf: Any) -> tuple[str, str, tuple[int, ...], str, int]:
    if isinstance(leaf, bytes | bytearray | memoryview):
        n = memoryview(leaf).nbytes
        return "bytes", "uint8", (n,), "cpu", n
    if type(leaf).__module__.startswith("numpy"):
        if leaf.dtype.hasobject:
            raise ConfigError("cannot checkpoint a numpy array of Python objects (dtype=object)")
        return "numpy", leaf.dtype.str, tuple(leaf.shape), "cpu", int(leaf.nbytes)
    import torch

    if leaf.layout != torch.strided or leaf.is_quantized:
        raise ConfigError(f"cannot snapshot a {leaf.layout} tensor: convert it to a dense one")
    dtype = str(leaf.dtype).removeprefix("torch.")
    return "torch", dtype, tuple(leaf.shape), str(leaf.device), leaf.numel() * leaf.element_size()


def nbytes_of(leaves: list[Any]) -> int:
    """Bytes of data in ``leaves`` (without alignment padding)."""
    return sum(_describe(leaf)[4] for leaf in leaves)


def plan(leaves: list[Any], *, shard_bytes: int) -> tuple[list[LeafSpec], list[ShardSpec]]:
    """Place every leaf in a shard of at most ``shard_bytes`` (a bigger leaf gets its own)."""
    specs: list[LeafSpec] = []
    shards: list[ShardSpec] = []
    start = used = 0
    for leaf in leaves:
        kind, dtype, shape, device, n = _describe(leaf)
        offset = align_up(used, _LEAF_ALIGN)
        if used and offset + n > shard_bytes:  # close the current shard
            shards.append(ShardSpec(shard_name(len(shards)), start, align_up(used)))
            start += align_up(used)
            offset = used = 0
        specs.append(LeafSpec(kind, dtype, shape, device, len(shards), offset, n))
        used = offset + n
    if used or not shards:
        shards.append(ShardSpec(shard_name(len(shards)), start, align_up(used)))
    return specs, shards


@dataclass
class Snapshot:
    """A state copied into a host buffer, ready for a background writer."""

    skeleton: Any
    leaves: list[LeafSpec]
    shards: list[ShardSpec]
    buffer: HostBuffer
    copy_seconds: float
    cuda_events: list[Any] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shards)

    def wait_ready(self) -> None:
        """Block until asynchronous device-to-host copies into the buffer have finished."""
        for event in self.cuda_events:
            event.synchronize()
        self.cuda_events.clear()

    def shard_view(self, shard: ShardSpec) -> memoryview:
        return self.buffer.view(shard.start, shard.start + shard.nbytes)

    def index_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "skeleton": self.skeleton,
            "shards": [{"name": s.name, "nbytes": s.nbytes} for s in self.shards],
            "leaves": [vars(spec) | {"shape": list(spec.shape)} for spec in self.leaves],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def take_snapshot(
    state: Any, pool: HostBufferPool, *, shard_bytes: int | None = None, shard_count: int = 1
) -> Snapshot:
    """Copy every array leaf of ``state`` into the pool's buffer; returns without waiting for
    device-to-host copies (they run on a side stream that training kernels wait for).

    Shards hold at most ``shard_bytes``; by default the state is split into ``shard_count``
    shards of at least 64 MiB, so that many threads can write (and hash) them in parallel.
    """
    started = time.perf_counter()
    skeleton, leaves = flatten(state)
    if shard_bytes is None:
        shard_bytes = max(MIN_SHARD, -(-nbytes_of(leaves) // max(1, shard_count)))
    specs, shards = plan(leaves, shard_bytes=shard_bytes)
    buffer = pool.get(sum(s.nbytes for s in shards))
    cuda: dict[Any, list[tuple[Any, Any]]] = {}  # device -> [(dst, src)]
    for leaf, spec in zip(leaves, specs, strict=True):
        at = shards[spec.shard].start + spec.offset
        if spec.kind == "bytes":
            buffer.view(at, at + spec.nbytes)[:] = memoryview(leaf).cast("B")
        elif spec.kind == "numpy":
            import numpy as np

            dst = np.frombuffer(buffer.view(at, at + spec.nbytes), dtype=leaf.dtype)
            np.copyto(dst.reshape(leaf.shape), leaf, casting="no")
        else:
            dst = _torch_view(buffer, at, spec)
            if leaf.is_cuda:
                cuda.setdefault(leaf.device, []).append((dst, leaf))
            else:
                dst.copy_(leaf.detach())
    events = [_copy_on_side_stream(device, pairs) for device, pairs in cuda.items()]
    return Snapshot(skeleton, specs, shards, buffer, time.perf_counter() - started, events)


def _torch_view(buffer: HostBuffer, at: int, spec: LeafSpec) -> Any:
    import torch

    flat = buffer.tensor()[at : at + spec.nbytes]
    return flat.view(getattr(torch, spec.dtype)).view(spec.shape)


def _copy_on_side_stream(device: Any, pairs: list[tuple[Any, Any]]) -> Any:
    """Queue device-to-host copies on a side stream; the current stream waits for them before
    running anything else, so training can not change a tensor that is still being copied."""
    import torch

    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)  # copy the values as of now
    with torch.cuda.stream(side):
        for dst, src in pairs:
            dst.copy_(src.detach(), non_blocking=True)
            src.record_stream(side)
    event = side.record_event()
    current.wait_event(event)
    return event


# -- loading ---------------------------------------------------------------------------------


def parse_index(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"{INDEX} is not valid JSON: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{INDEX} has format {doc.get('format')!r}; this version reads format {FORMAT}: "
            "upgrade spot-workflows"
        )
    return doc


def _map_device(device: str, map_location: Any) -> Any:
    if map_location is None:
        return device
    if isinstance(map_location, dict):
        return map_location.get(device, device)
    if callable(map_location):
        return map_location(device)
    return map_location


def rebuild(
    doc: dict[str, Any],
    shards: dict[str, memoryview],
    *,
    map_location: Any = None,
    allow_pickle: bool = False,
) -> Any:
    """The state of a parsed index, from its shard bytes.

    CPU tensors and numpy arrays share memory with ``shards`` (no copy); tensors saved from
    another device go to ``map_location`` (a device, a ``{saved: target}`` dict or a callable),
    or back to the device they came from when it is None.
    """
    names = [s["name"] for s in doc["shards"]]
    leaves: list[Any] = []
    for raw in doc["leaves"]:
        spec = LeafSpec(**{**raw, "shape": tuple(raw["shape"])})
        view = shards[names[spec.shard]][spec.offset : spec.offset + spec.nbytes]
        if spec.kind == "bytes":
            leaves.append(bytes(view))
        elif spec.kind == "numpy":
            import numpy as np

            leaves.append(np.frombuffer(view, dtype=np.dtype(spec.dtype)).reshape(spec.shape))
        else:
            leaves.append(_load_tensor(view, spec, _map_device(spec.device, map_location)))
    return unflatten(doc["skeleton"], leaves, allow_pickle=allow_pickle)


def _load_tensor(view: memoryview, spec: LeafSpec, device: Any) -> Any:
    import torch

    dtype = getattr(torch, spec.dtype)
    if spec.nbytes:
        t = torch.frombuffer(view, dtype=torch.uint8).view(dtype).view(spec.shape)
    else:
        t = torch.empty(spec.shape, dtype=dtype)
    target = torch.device(device)
    if target.type == "cpu":
        return t
    try:
        return t.to(target)
    except (RuntimeError, AssertionError) as exc:
        raise CheckpointError(
            f"tensor saved from {spec.device} cannot be restored onto {target} here ({exc}); "
            "pass map_location='cpu' (or another device) to restore"
        ) from exc
