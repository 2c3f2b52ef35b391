"""Seeded worker-kill campaign: real worker processes SIGKILLed at random points, then resumed.

Each run trains the shipped toy model (``spot_workflows.examples.toy_train``: its ``train_step``,
``pack``/``unpack``, deterministic minibatches) with the real :class:`Checkpointer` and
:class:`CheckpointStore` on a ``file://`` prefix. Every attempt is a real process (forked from
this one, so 200 runs do not pay 600 interpreter start-ups) that restores the newest checkpoint
and trains on; the campaign kills it with a real ``SIGKILL``:

* ``phase``: at a named point of a save (``SPOT_WORKFLOWS_FAULT``, :mod:`spot_workflows.runtime.
  faults`): mid data-file write, data staged, mid manifest write, mid ``latest.json``, before tidy;
* ``timer``: at a random time from outside (start-up, restore, a training step or a save);
* ``notice``: a termination notice (a real SIGTERM through the Checkpointer's handler) at a random
  step: the worker emergency-saves and exits 75 (nothing killed; counted apart);
* ``notice-kill``: a notice, then SIGKILL at a named point of the emergency save (grace ran out);
* ``notice-timer``: a notice, then SIGKILL at a random time after the emergency save began.

After every attempt the newest checkpoint is read back (sizes and sha256 verified) and compared
byte for byte with the uninterrupted run's state at that step; it must never go backwards. The
last attempt runs to the end; its output (the final weights' checksum) and final checkpoint must
be bit-identical to the uninterrupted run's. ``lost steps`` = steps reached by a killed attempt
that the next attempt had to redo.

    python tests/reliability/worker_lab.py --runs 200 --jobs 2 [--dir DIR] [--records FILE]

prints a JSON summary (``bench/fault_injection.py`` wraps it). Linux only (fork, pidfd).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import random
import select
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import time
import warnings
from pathlib import Path

from lanes import run_forked_lanes

from spot_workflows.examples.toy_train import _teacher, fresh_state, pack, train_step, unpack
from spot_workflows.runtime.checkpoint.checkpointer import Checkpointer
from spot_workflows.runtime.store import faults
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore, CheckpointWarning

SAVE_POINTS = ("data", "staged", "manifest", "latest", "tidy")
MID_WRITE = ("data", "manifest", "latest")
PER_SAVE = {"data": 2, "staged": 1, "manifest": 1, "latest": 1, "tidy": 1}  # arrivals per save
KILL_MODES = ("phase", "timer", "notice-kill", "notice-timer")
TRAIN_SEEDS = 8
OPTIM_BYTES = 64 * 1024
# what the worker is doing, in the shared page: for classifying where a timer kill landed
PHASES = ("start", "compute", "save", "emergency", "done")


def optim_blob(state: dict) -> bytes:
    """A second, larger checkpoint file (stands in for optimizer state), derived from the state."""
    return hashlib.shake_256(pack(state)).digest(OPTIM_BYTES)


def reference_chain(seed: int, steps: int) -> list[bytes]:
    """Packed state of the uninterrupted run after 0, 1, ..., ``steps`` steps."""
    teacher, state = _teacher(seed), fresh_state()
    chain = [pack(state)]
    while state["step"] < steps:
        train_step(state, seed, teacher)
        chain.append(pack(state))
    return chain


# -- the worker (runs in the forked child) ------------------------------------------------------
class Shared:
    """A page shared with the forked worker: start step, reached step, phase."""

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, 64)

    def set(self, slot: int, value: int) -> None:
        struct.pack_into("<q", self.page, 8 * slot, value)

    def get(self, slot: int) -> int:
        return struct.unpack_from("<q", self.page, 8 * slot)[0]

    def reset(self) -> None:
        for slot in range(3):
            self.set(slot, -1)


START, REACHED, PHASE = 0, 1, 2


def worker(job: dict, shared: Shared) -> int:
    """One attempt: restore, train, save on cadence; a notice at ``notice_step`` (SIGTERM)."""
    os.environ.update(
        SPOT_CHECKPOINT_URI=job["uri"],
        SPOT_STEP_KEY=f"run-{job['run']}",
        SPOT_ATTEMPT=str(job["attempt"]),
        SPOT_CAPACITY="SPOT",
    )
    os.environ.pop(faults.ENV, None)
    if job.get("fault"):
        os.environ[faults.ENV] = job["fault"]
    faults._seen.clear()
    shared.set(PHASE, PHASES.index("start"))
    ckpt = Checkpointer.from_env(every_steps=job["every"], keep_last=2)
    seed, steps = job["seed"], job["steps"]
    teacher = _teacher(seed)
    restored = ckpt.restore()
    state = unpack(restored.read("state.bin")) if restored else fresh_state()
    if restored is not None and restored.read("optim.bin") != optim_blob(state):
        return 3  # a checkpoint whose files disagree: never expected
    shared.set(START, state["step"])
    shared.set(REACHED, state["step"])
    while state["step"] < steps:
        shared.set(PHASE, PHASES.index("compute"))
        train_step(state, seed, teacher)
        step = state["step"]
        shared.set(REACHED, step)
        files = {"state.bin": pack(state), "optim.bin": optim_blob(state)}
        if step == job.get("notice_step"):
            if job.get("notice_fault"):  # the grace runs out at this point of the emergency save
                os.environ[faults.ENV] = job["notice_fault"]
                faults._seen.clear()
            os.kill(os.getpid(), signal.SIGTERM)  # the notice: spot-run forwards it as SIGTERM
        if ckpt.stop_requested:
            shared.set(PHASE, PHASES.index("emergency"))
            report = ckpt.emergency_save(step, files, progress=step / steps)
            return 75 if report.error is None else 4
        if ckpt.should_save(step) or step == steps:
            shared.set(PHASE, PHASES.index("save"))
            ckpt.save(step, files, progress=step / steps)
    shared.set(PHASE, PHASES.index("done"))
    out = Path(job["output"])
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"checksum": hashlib.sha256(pack(state)).hexdigest()}))
    os.replace(tmp, out)
    return 0


def spawn(job: dict, shared: Shared) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = worker(job, shared)
        except BaseException as exc:  # report, never return into the parent's stack
            with contextlib.suppress(Exception):
                sys.stderr.write(f"worker run {job['run']}: {type(exc).__name__}: {exc}\n")
        finally:
            os._exit(code)
    return pid


def wait(
    pid: int,
    *,
    kill_after: float | None = None,
    shared: Shared | None = None,
    at_step: int | None = None,
) -> int:
    """Wait for the worker; SIGKILL it ``kill_after`` s after it reached step ``at_step`` (or
    after its emergency save began, when ``at_step`` is None). Returns the wait status."""
    fd = os.pidfd_open(pid)
    try:
        if shared is not None and kill_after is not None:  # wait for the moment, then the timer

            def there() -> bool:
                if at_step is None:
                    return shared.get(PHASE) == PHASES.index("emergency")
                return shared.get(REACHED) >= at_step

            while not there():
                if select.select([fd], [], [], 0.0003)[0]:
                    break
        if kill_after is not None and not select.select([fd], [], [], kill_after)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return os.waitpid(pid, 0)[1]
    finally:
        os.close(fd)


# -- planning ---------------------------------------------------------------------------------
def saves_from(start: int, steps: int, every: int) -> int:
    """Saves an uninterrupted attempt from ``start`` makes (cadence plus the final one)."""
    cadence = list(range(start + every, steps + 1, every))
    return len(cadence) + (0 if steps in cadence or start >= steps else 1)


def plan_attempt(rng: random.Random, *, start: int, steps: int, every: int, force_kill: bool):
    modes = ("phase", "timer", "notice", "notice-kill", "notice-timer")
    weights = (40, 20, 15, 15, 10) if not force_kill else (40, 0, 0, 15, 0)  # sure to kill
    mode = rng.choices(modes, weights=weights)[0]
    job: dict = {"mode": mode}
    if mode == "phase":
        point = rng.choice(SAVE_POINTS)
        arrivals = saves_from(start, steps, every) * PER_SAVE[point]
        job.update(point=point, fault=f"{point}:{rng.randint(1, max(1, arrivals))}")
    elif mode == "timer":  # at a random moment of a random step (compute or save)
        job.update(timer_step=rng.randint(start, steps - 1), timer_frac=rng.random())
    else:
        job["notice_step"] = rng.randint(start + 1, steps) if start < steps else None
        if mode == "notice-kill":
            point = rng.choice(SAVE_POINTS)
            job.update(point=point, notice_fault=f"{point}:{rng.randint(1, PER_SAVE[point])}")
        elif mode == "notice-timer":
            job["timer_s"] = rng.uniform(0.0, 0.006)
    return job


# -- one run ----------------------------------------------------------------------------------
class Lab:
    def __init__(self, root: Path, refs: dict[int, list[bytes]]) -> None:
        self.root = root
        self.refs = refs
        self.shared = Shared()
        self.step_s = 0.008  # per-step estimate for timer kills; refined by clean attempts
        self.warnings = 0

    def latest(self, store: CheckpointStore):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", CheckpointWarning)
            latest = store.latest()
        self.warnings += sum(issubclass(w.category, CheckpointWarning) for w in seen)
        return latest

    def check(self, store: CheckpointStore, seed: int) -> tuple[int, bool]:
        """Newest checkpoint step and whether it is byte-identical to the reference there."""
        latest = self.latest(store)
        if latest is None:
            return -1, True
        state = store.read_file(latest, "state.bin")  # sha256-verified
        optim = store.read_file(latest, "optim.bin")
        ref = self.refs[seed][latest.step]
        return latest.step, state == ref and optim == optim_blob(unpack(ref))

    def run(self, run: int, base_seed: int, max_kills: int) -> dict:
        rng = random.Random(f"{base_seed}-{run}")
        seed = run % TRAIN_SEEDS
        steps, every = rng.randint(5, 12), rng.randint(2, 4)
        workdir = self.root / f"run-{run}"
        uri = f"file://{workdir}/ckpt"
        store = CheckpointStore(uri)
        output = workdir / "output.json"
        planned = rng.randint(1, max_kills)
        attempts: list[dict] = []
        previous, identical = -1, True
        while True:
            number = len(attempts) + 1
            start = max(previous, 0)
            interrupt = start < steps and len(attempts) < planned
            plan = (
                plan_attempt(
                    rng,
                    start=start,
                    steps=steps,
                    every=every,
                    force_kill=not attempts,
                )
                if interrupt
                else {"mode": "clean"}
            )
            job = {**plan, "run": run, "attempt": number, "uri": uri, "seed": seed}
            job.update(steps=steps, every=every, output=str(output))
            self.shared.reset()
            t0 = time.perf_counter()
            pid = spawn(job, self.shared)
            if plan["mode"] == "timer":
                delay = plan["timer_frac"] * self.step_s
                status = wait(pid, kill_after=delay, shared=self.shared, at_step=plan["timer_step"])
            elif plan["mode"] == "notice-timer":
                status = wait(pid, kill_after=plan["timer_s"], shared=self.shared)
            else:
                status = wait(pid)
            elapsed = time.perf_counter() - t0
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            code = os.waitstatus_to_exitcode(status)
            reached, began = self.shared.get(REACHED), self.shared.get(START)
            where = PHASES[self.shared.get(PHASE)] if self.shared.get(PHASE) >= 0 else "start"
            step, same = self.check(store, seed)
            identical &= same
            if code == 0 and began >= 0 and reached > began:
                self.step_s = 0.8 * self.step_s + 0.2 * elapsed / (reached - began)
            attempts.append(
                {
                    **{k: plan[k] for k in ("mode", "point") if k in plan},
                    "start": began,
                    "reached": reached,
                    "exit": code,
                    "killed": killed,
                    "landed_in": where if killed else None,
                    "checkpoint_after": step,
                    "checkpoint_identical": same,
                    "went_back": step < previous,
                }
            )
            previous = max(previous, step)
            if code == 0 or len(attempts) > planned + 6:
                break
        for before, after in zip(attempts, attempts[1:], strict=False):
            before["lost_steps"] = (
                max(0, before["reached"] - after["start"]) if after["start"] >= 0 else None
            )
        final = json.loads(output.read_text())["checksum"] if output.exists() else None
        step, same = self.check(store, seed)
        reference = hashlib.sha256(self.refs[seed][steps]).hexdigest()
        shutil.rmtree(workdir, ignore_errors=True)
        return {
            "run": run,
            "seed": seed,
            "steps": steps,
            "every": every,
            "attempts": attempts,
            "final_checksum": final,
            "reference_checksum": reference,
            "final_checkpoint_step": step,
            "bit_identical": final == reference and step == steps and same and identical,
        }


def lane(root: Path, runs: list[int], base_seed: int, max_kills: int, out: Path) -> None:
    refs = {s: reference_chain(s, 14) for s in range(TRAIN_SEEDS)}
    lab = Lab(root, refs)
    records = [lab.run(run, base_seed, max_kills) for run in runs]
    out.write_text(json.dumps({"records": records, "corrupt_warnings": lab.warnings}))


def campaign(*, runs: int, jobs: int, seed: int, root: Path, max_kills: int = 3) -> dict:
    """Run the campaign over ``jobs`` forked lanes; returns records and a summary."""
    root.mkdir(parents=True, exist_ok=True)
    run_forked_lanes(
        jobs,
        lambda j: lane(root, list(range(j, runs, jobs)), seed, max_kills, root / f"lane-{j}.json"),
        what="campaign",
    )
    records, corrupt = [], 0
    for j in range(jobs):
        doc = json.loads((root / f"lane-{j}.json").read_text())
        records += doc["records"]
        corrupt += doc["corrupt_warnings"]
    records.sort(key=lambda r: r["run"])
    return {"summary": summarize(records, corrupt), "records": records}


def summarize(records: list[dict], corrupt_warnings: int = 0) -> dict:
    attempts = [a for r in records for a in r["attempts"]]
    kills = [a for a in attempts if a["killed"]]
    lost = [a["lost_steps"] for a in kills if a.get("lost_steps") is not None]
    notice_lost = [a["lost_steps"] for a in attempts if a["mode"] == "notice" and a["exit"] == 75]
    by_mode: dict[str, int] = {}
    for a in kills:
        label = a["mode"] + (f":{a['point']}" if a.get("point") else "")
        label += f"@{a['landed_in']}" if a["mode"].endswith("timer") else ""
        by_mode[label] = by_mode.get(label, 0) + 1
    mid_write = sum(
        1
        for a in kills
        if a.get("point") in MID_WRITE or (a["mode"] == "timer" and a["landed_in"] == "save")
    )
    in_save = sum(1 for a in kills if a.get("point") or a["landed_in"] in ("save", "emergency"))
    return {
        "runs": len(records),
        "attempts": len(attempts),
        "sigkills": len(kills),
        "sigkills_by_mode": dict(sorted(by_mode.items())),
        "sigkills_mid_write": mid_write,
        "sigkills_during_a_save": in_save,
        "sigkills_mid_manifest": sum(1 for a in kills if a.get("point") == "manifest"),
        "sigkills_after_a_notice": sum(1 for a in kills if a["mode"].startswith("notice")),
        "notices_saved_cleanly": len(notice_lost),
        "steps_lost_per_notice_max": max(notice_lost, default=0),
        "steps_lost_per_sigkill_mean": round(statistics.fmean(lost), 2) if lost else 0.0,
        "steps_lost_per_sigkill_max": max(lost, default=0),
        "steps_lost_total": sum(lost) + sum(notice_lost),
        "checkpoint_went_backwards": sum(1 for a in attempts if a["went_back"]),
        "checkpoint_not_identical": sum(1 for a in attempts if not a["checkpoint_identical"]),
        "corrupt_checkpoint_warnings": corrupt_warnings,
        "bit_identical_runs": sum(1 for r in records if r["bit_identical"]),
        "all_bit_identical": all(r["bit_identical"] for r in records),
    }


def default_root() -> Path:
    """tmpfs when there is one (the campaign writes thousands of small checkpoints)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="spot-fault-lab-", dir=base))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--max-kills", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--records", type=Path, default=None, help="write per-run records here")
    args = ap.parse_args(argv)
    root = args.dir or default_root()
    t0 = time.perf_counter()
    try:
        result = campaign(
            runs=args.runs, jobs=args.jobs, seed=args.seed, root=root, max_kills=args.max_kills
        )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.records is not None:
        args.records.write_text(json.dumps(result["records"]))
    summary = {**result["summary"], "seed": args.seed, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
