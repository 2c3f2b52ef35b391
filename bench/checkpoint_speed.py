"""Checkpoint write speed: stall and time-to-durable of the async checkpointer against torch.save
and PyTorch DCP's async_save, with the disk's raw bandwidth measured in the same run.

    .venv/bin/python bench/checkpoint_speed.py                       # 2 GB of CPU tensors
    .venv/bin/python bench/checkpoint_speed.py --size-gb 4 --saves 3
    python bench/checkpoint_speed.py --device cuda --adamw-params 1.08e9   # ~13 GB on a GPU

Prints one JSON object. Figures:

* ``raw_disk``: sequential ``O_DIRECT`` writes of the same number of bytes from an aligned buffer,
  then fsync (what ``dd oflag=direct conv=fsync`` measures); ``dd`` itself too when present;
* ``torch_save``: ``torch.save`` to a file, then fsync: training is blocked for all of it;
* ``dcp_async_save``: ``torch.distributed.checkpoint.async_save`` (no process group): stall until
  it returns, durable when its future resolves;
* ``async_checkpointer``: ``AsyncCheckpointer.save`` through a ``CheckpointStore``: the stall of
  the first save (allocates the host buffer) and the median of the following ones, time to
  durable, persist bandwidth and its fraction of ``raw_disk``. On CUDA the stall is reported twice:
  on the host (``save()`` returns) and on the device (until the training stream may run again).
* ``throughput_loss_at_5min_cadence``: steady stall / 300 s;
* ``emergency_save``: a termination notice with GCP's 30 s deadline arrives while a periodic save
  is in flight (the worst case: the newest state supersedes the write under way) and, separately,
  when nothing is in flight: seconds from the notice to a durable checkpoint, and whether that
  beat the deadline (``EmergencySaveReport.met_deadline``);
* ``machine``: GPU model, driver, CUDA, CPU count and the file system written to.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import torch

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.runtime.checkpoint.async_checkpoint import AsyncCheckpointer
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore

GB = 1e9
CHUNK = 64 * 1024 * 1024


def make_state(size_gb: float, adamw_params: float | None, device: str) -> dict:
    """Tensors of a realistic mix of sizes; with ``adamw_params``, a model + AdamW state
    (params, exp_avg, exp_avg_sq in fp32: 12 bytes per parameter)."""
    g = torch.Generator(device=device).manual_seed(0)
    if adamw_params:
        n_layers = max(1, round(adamw_params / (4096 * 4096)))
        shapes = [(4096, 4096)] * n_layers
        model = {
            f"layer{i}.weight": torch.randn(s, generator=g, device=device)
            for i, s in enumerate(shapes)
        }
        optim = {
            "state": {
                i: {
                    "step": torch.tensor(100.0),
                    "exp_avg": torch.randn(s, generator=g, device=device),
                    "exp_avg_sq": torch.rand(s, generator=g, device=device),
                }
                for i, s in enumerate(shapes)
            },
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": list(range(n_layers))}],
        }
        return {"model": model, "optimizer": optim, "step": 100}
    total = int(size_gb * GB)
    sizes = [64 << 20, 16 << 20, 4 << 20, 1 << 20, 256 << 10]  # bytes, cycled
    tensors, used, i = {}, 0, 0
    while used < total:
        n = min(sizes[i % len(sizes)], total - used) // 4 or 1
        tensors[f"t{i}"] = torch.randn(n, generator=g, device=device)
        used += n * 4
        i += 1
    return {"model": tensors, "step": 100}


def state_bytes(state: dict) -> int:
    out = 0
    stack = [state]
    while stack:
        v = stack.pop()
        if torch.is_tensor(v):
            out += v.numel() * v.element_size()
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return out


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_disk(directory: Path, nbytes: int) -> dict:
    buf = mmap.mmap(-1, CHUNK)
    buf.write(os.urandom(CHUNK))
    path = directory / "raw.bin"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags | os.O_DIRECT, 0o644)
        direct = True
    except OSError:
        fd, direct = os.open(path, flags, 0o644), False
    started = time.perf_counter()
    done = 0
    while done < nbytes:
        done += os.write(fd, memoryview(buf)[: min(CHUNK, nbytes - done + 4095) // 4096 * 4096])
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    out = {"seconds": seconds, "gb_per_s": done / GB / seconds, "o_direct": direct}
    if shutil.which("dd"):
        count = max(1, nbytes // CHUNK)
        proc = subprocess.run(
            [
                "dd",
                "if=/dev/zero",
                f"of={path}",
                "bs=64M",
                f"count={count}",
                "oflag=direct",
                "conv=fsync",
            ],
            capture_output=True,
            text=True,
        )
        path.unlink(missing_ok=True)
        line = proc.stderr.strip().splitlines()[-1] if proc.stderr else ""
        try:
            secs = float(line.split(" s, ")[0].rsplit(",", 1)[1])
            out["dd_direct_gb_per_s"] = count * CHUNK / GB / secs
        except (IndexError, ValueError):
            out["dd_output"] = line
    return out


def raw_write_of_buffer(ckpt: AsyncCheckpointer, directory: Path, nbytes: int) -> dict:
    """The same bytes from the same host buffer, written with O_DIRECT + fsync by one thread and
    not hashed; and each checksum over them on ``io_threads`` threads: the bounds of a persist."""
    from concurrent.futures import ThreadPoolExecutor

    from spot_workflows.runtime.store import bulk_io, digests

    view = ckpt.writer.pool._buffer.view(0, nbytes // 4096 * 4096)
    path = str(directory / "raw-same.bin")
    started = time.perf_counter()
    bulk_io._write_fd(path, view, direct=True, cancelled=lambda: False, chunk=bulk_io.CHUNK)
    write_s = time.perf_counter() - started
    os.unlink(path)
    n = ckpt.writer.io_threads
    parts = [view[i * len(view) // n : (i + 1) * len(view) // n] for i in range(n)]
    out = {"raw_same_bytes_gb_per_s": len(view) / GB / write_s}
    for algorithm in digests.ALGORITHMS:
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda part, a=algorithm: digests.of(part, a), parts))
        out[f"{algorithm}_gb_per_s"] = len(view) / GB / (time.perf_counter() - started)
    return out


def bench_torch_save(state: dict, directory: Path, nbytes: int) -> dict:
    path = directory / "torch_save.pt"
    started = time.perf_counter()
    torch.save(state, path)
    fsync_path(path)
    seconds = time.perf_counter() - started
    path.unlink()
    return {"stall_s": seconds, "durable_s": seconds, "gb_per_s": nbytes / GB / seconds}


def bench_dcp(state: dict, directory: Path, nbytes: int, sync: callable) -> dict:
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError as exc:
        return {"error": f"unavailable: {exc}"}
    out_dir = directory / "dcp"
    try:
        started = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(out_dir), no_dist=True)
        sync()
        stall = time.perf_counter() - started
        result = future.result() if hasattr(future, "result") else future.upload_completion.result()
        del result
        durable = time.perf_counter() - started
    except Exception as exc:  # report, do not abort the other figures
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"stall_s": stall, "durable_s": durable, "gb_per_s": nbytes / GB / durable}


def bench_async(
    state: dict, directory: Path, saves: int, io_threads: int | None, cuda: bool
) -> dict:
    store = CheckpointStore((directory / "async").as_uri(), keep_last=1)
    ckpt = AsyncCheckpointer(Checkpointer(store, handle_signals=False), io_threads=io_threads)
    stalls_host, stalls_device, durable, persist, gbps = [], [], [], [], []
    for step in range(1, saves + 1):
        started = time.perf_counter()
        ticket = ckpt.save(step, state)
        stalls_host.append(time.perf_counter() - started)
        if cuda:
            torch.cuda.current_stream().synchronize()  # the training stream waits for the copy
            stalls_device.append(time.perf_counter() - started)
        result = ticket.result()
        durable.append(time.perf_counter() - started)
        ckpt.writer.drain()  # saves are minutes apart: the previous retention is long done
        persist.append(result.persist_seconds)
        gbps.append(result.persist_gb_per_s)
        nbytes = result.nbytes
    raw_same = raw_write_of_buffer(ckpt, directory, nbytes)
    ckpt.close()
    shutil.rmtree(directory / "async", ignore_errors=True)
    steady = stalls_device[1:] or stalls_device if cuda else stalls_host[1:] or stalls_host
    out = {
        "bytes_written": nbytes,
        "stall_first_s": (stalls_device or stalls_host)[0],
        "stall_steady_s": statistics.median(steady),
        "durable_s": statistics.median(durable[1:] or durable),
        "persist_s": statistics.median(persist[1:] or persist),
        "gb_per_s": statistics.median(gbps[1:] or gbps),
        "io_threads": ckpt.writer.io_threads,
        "pinned": bool(ckpt.writer.pool.pin) if ckpt.writer.pool.pin is not None else cuda,
    }
    out.update(raw_same)
    if cuda:
        out["stall_host_steady_s"] = statistics.median(stalls_host[1:] or stalls_host)
    return out


def bench_emergency(state: dict, directory: Path, io_threads: int | None, notice_s: float) -> dict:
    """Seconds from a termination notice to a durable emergency checkpoint: once while a periodic
    save of an older step is being written (abandoned: the newest state supersedes it), once with
    nothing in flight. The host buffer is reserved at start-up, as the docs advise."""
    store = CheckpointStore((directory / "emergency").as_uri(), keep_last=1)
    ckpt = AsyncCheckpointer(Checkpointer(store, handle_signals=False), io_threads=io_threads)
    ckpt.reserve(state)
    out: dict = {"notice_s": notice_s}
    try:
        for case, step in (("in_flight", 2), ("idle", 4)):
            if case == "in_flight":
                ckpt.save(step - 1, state)  # a periodic save starts writing...
                time.sleep(0.5)  # ...and is well under way when the notice comes
            else:
                ckpt.writer.drain()
            deadline = datetime.now(UTC) + timedelta(seconds=notice_s)
            ckpt.checkpointer.request_stop(
                TerminationNotice(kind=NoticeKind.INTERRUPTION, source="bench", deadline=deadline)
            )
            started = time.perf_counter()
            report = ckpt.emergency_save(step, state)
            seconds = time.perf_counter() - started
            latest = store.latest()
            out[case] = {
                "seconds": seconds,
                "met_deadline": report.met_deadline,
                "error": report.error,
                "durable_step": latest.step if latest is not None else None,
            }
            ckpt.checkpointer._notice = None
    finally:
        ckpt.close()
        shutil.rmtree(directory / "emergency", ignore_errors=True)
    out["met_all"] = all(
        out[c]["met_deadline"] and not out[c]["error"] for c in ("in_flight", "idle")
    )
    return out


def machine_info(directory: Path, cuda: bool) -> dict:
    """What the figures were measured on."""
    out: dict = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    if cuda:
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
        out["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / GB
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=driver_version,pcie.link.gen.max,pcie.link.width.max",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        out["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    if shutil.which("findmnt"):
        proc = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--target", str(directory)],
            capture_output=True,
            text=True,
        )
        out["filesystem"] = proc.stdout.strip()
    usage = shutil.disk_usage(directory)
    out["disk_free_gb"] = usage.free / GB
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-gb", type=float, default=2.0, help="state size (synthetic tensors)")
    ap.add_argument(
        "--adamw-params", type=float, default=None, help="model+AdamW state of N params"
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir on /tmp)")
    ap.add_argument("--saves", type=int, default=3, help="async saves (the first allocates)")
    ap.add_argument("--io-threads", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma list: torch_save,dcp,emergency")
    ap.add_argument("--notice-s", type=float, default=30.0, help="notice window (GCP: 30 s)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    directory = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    state = make_state(args.size_gb, args.adamw_params, args.device)
    nbytes = state_bytes(state)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    skip = set(filter(None, args.skip.split(",")))
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "state_gb": nbytes / GB,
        "tensors": sum(1 for _ in _tensors(state)),
        "dir": str(directory),
        "machine": machine_info(directory, cuda),
        "raw_disk": raw_disk(directory, nbytes),
    }
    report["async_checkpointer"] = bench_async(state, directory, args.saves, args.io_threads, cuda)
    if "torch_save" not in skip:
        report["torch_save"] = bench_torch_save(state, directory, nbytes)
    if "dcp" not in skip:
        report["dcp_async_save"] = bench_dcp(state, directory, nbytes, sync)
    if "emergency" not in skip:
        report["emergency_save"] = bench_emergency(state, directory, args.io_threads, args.notice_s)
    raw = report["raw_disk"]["gb_per_s"]
    ours = report["async_checkpointer"]
    ours["fraction_of_raw_disk"] = ours["gb_per_s"] / raw
    ours["stall_per_4gb_s"] = ours["stall_steady_s"] * 4 / report["state_gb"]
    ours["durable_vs_size_over_raw"] = ours["durable_s"] / (nbytes / GB / raw)
    ours["throughput_loss_at_5min_cadence"] = ours["stall_steady_s"] / 300.0
    if not args.dir:
        shutil.rmtree(directory, ignore_errors=True)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def _tensors(v):
    if torch.is_tensor(v):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _tensors(x)
    elif isinstance(v, list | tuple):
        for x in v:
            yield from _tensors(x)


if __name__ == "__main__":
    sys.exit(main())
