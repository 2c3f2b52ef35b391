"""Several runners of one step at once: jobs the backend received against the ledger. Prints JSON.

Not a timed test (the suite's own checks are ``tests/integration/test_concurrent_runners.py`` and
``tests/integration/aws/test_aws_concurrent_runners.py``); these are the figures for
docs/reliability.md.

    .venv/bin/python bench/concurrent_runners.py [--rounds 3] [--runners 2,8]

* ``local``: N runner *processes* of one step started together on one local spot cloud (the
  first spot attempt reclaimed after its first checkpoint, then on-demand), ``rounds`` times;
* ``aws``: N runner *threads* against AWS Batch on a moto server, ledger on S3 (the first spot
  attempt reclaimed), ``rounds`` times.

For each: runners, steps, attempts in the ledgers, jobs the backend received, duplicates (more
than one job for an attempt number), jobs missing from the ledger, attempts with no job, ledger
writes and conflicts (writes lost to another runner and re-applied).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from spot_workflows.backends.local import LocalBackend  # noqa: E402
from spot_workflows.config import StepSpec  # noqa: E402
from spot_workflows.ledger import Ledger  # noqa: E402
from spot_workflows.runtime.store.checkpoint_store import CheckpointStore  # noqa: E402

LOCAL_RUNNER = """
import json, sys
from spot_workflows.backends.local import LocalBackend
from spot_workflows.backends.local.market import ScheduledMarket
from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.runner import StepRunner
doc = json.loads(sys.argv[1])
backend = LocalBackend(state_dir=doc["state_dir"], notice_window_s=0.5, grace_s=2.0,
                       market=ScheduledMarket(reclaims=[0.5], after_checkpoint=True))
runner = StepRunner(spec=StepSpec.model_validate(doc["spec"]), backend=backend,
                    policy=SpotPolicy(preemption_budget=1), poll_interval=0.1)
sys.stdin.readline()
result = runner.run()
print(json.dumps({"ok": result.succeeded, "writes": runner.ledger.writes,
                  "conflicts": runner.ledger.conflicts}))
"""


def tally(attempts, jobs: list[tuple[int, str]], runs: list[dict]) -> dict:
    per_number = Counter(n for n, _ in jobs)
    recorded = {a.job_id for a in attempts}
    return {
        "attempts": len(attempts),
        "jobs": len(jobs),
        "duplicates": sum(c - 1 for c in per_number.values()),
        "jobs_not_in_ledger": sum(1 for _, j in jobs if j not in recorded),
        "attempts_without_job": sum(1 for a in attempts if a.job_id not in {j for _, j in jobs}),
        "succeeded": all(r.get("ok") for r in runs),
        "ledger_writes": sum(r.get("writes", 0) for r in runs),
        "ledger_conflicts": sum(r.get("conflicts", 0) for r in runs),
    }


def local_round(n: int, tmp: Path) -> dict:
    spec = StepSpec(
        key="bench-step",
        command=[sys.executable, "-m", "spot_workflows.examples.toy_train", "--steps=150",
                 "--every=10", "--step-seconds=0.02"],
        checkpoint_uri=(tmp / "ckpt").as_uri(),
    )  # fmt: skip
    state_dir = tmp / "cloud"
    backend = LocalBackend(state_dir=state_dir).start()
    doc = json.dumps({"spec": spec.model_dump(mode="json"), "state_dir": str(state_dir)})
    procs = [
        subprocess.Popen([sys.executable, "-c", LOCAL_RUNNER, doc], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]  # fmt: skip
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    runs = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        runs.append(json.loads(out.strip().splitlines()[-1]) if p.returncode == 0 else {})
    jobs = [(j["attempt"], j["job_id"]) for j in backend.jobs()]
    attempts = Ledger.open(CheckpointStore(spec.checkpoint_uri), spec.key).attempts
    backend.shutdown()
    return tally(attempts, jobs, runs)


def aws_round(n: int, moto, outputs: dict, key: str) -> dict:
    from spot_workflows.backends.aws_batch import AwsBatchBackend
    from spot_workflows.config import SpotPolicy
    from spot_workflows.runner import StepRunner

    spec = StepSpec(key=key, command=["python", "train.py"], vcpus=2, memory_mib=4096,
                    image="public.ecr.aws/docker/library/python:3.11",
                    checkpoint_uri=f"s3://ckpt/{key}")  # fmt: skip
    batch = moto.client("batch")
    lock, reclaimed = threading.Lock(), []

    def on_event(event) -> None:  # the first spot job is reclaimed as AWS reports it
        with lock:
            if event.kind == "submitted" and not reclaimed:
                reclaimed.append(event.attempt.job_id)
                batch.terminate_job(
                    jobId=event.attempt.job_id, reason="Host EC2 (instance i-0abc) terminated."
                )
                os.environ.pop("MOTO_SIMPLE_BATCH_FAIL_AFTER", None)  # later jobs succeed

    def store() -> CheckpointStore:
        return CheckpointStore(spec.checkpoint_uri, storage_options=moto.s3_options)

    runs: list[dict] = [{} for _ in range(n)]
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        runner = StepRunner(
            spec=spec,
            backend=AwsBatchBackend(spot_queue=outputs["spot_queue"], region="us-east-1",
                                    on_demand_queue=outputs["on_demand_queue"],
                                    endpoint_url=moto.url, sleep=lambda s: None),
            store=store(), policy=SpotPolicy(preemption_budget=2), poll_interval=0.05,
            on_event=on_event,
        )  # fmt: skip
        barrier.wait(timeout=60)
        try:
            result = runner.run()
        except Exception as exc:  # counted as not succeeded
            runs[i] = {"ok": False, "error": repr(exc)}
            return
        runs[i] = {
            "ok": result.succeeded,
            "writes": runner.ledger.writes,
            "conflicts": runner.ledger.conflicts,
        }

    os.environ["MOTO_SIMPLE_BATCH_FAIL_AFTER"] = "0"  # the first job fails: reclaimed above
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    os.environ.pop("MOTO_SIMPLE_BATCH_FAIL_AFTER", None)
    jobs = []
    for queue in (outputs["spot_queue"], outputs["on_demand_queue"]):
        for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED",
                       "FAILED"):  # fmt: skip
            for j in batch.list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]:
                if j["jobName"].startswith(key):
                    jobs.append((int(j["jobName"].rsplit("-a", 1)[1]), j["jobId"]))
    return tally(Ledger.open(store(), key).attempts, sorted(set(jobs)), runs)


def add(total: dict, row: dict) -> None:
    for k, v in row.items():
        total[k] = (total.get(k, True) and v) if isinstance(v, bool) else total.get(k, 0) + v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runners", default="2,8")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.runners.split(",")]
    out: dict = {"rounds": args.rounds, "local": {}, "aws": {}}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        for n in sizes:
            total: dict = {"runners": n * args.rounds, "steps": args.rounds}
            for r in range(args.rounds):
                add(total, local_round(n, Path(tmp) / f"local-{n}-{r}"))
            out["local"][str(n)] = total
    from moto_lab import bootstrap_queues, moto_server

    with moto_server() as moto:
        outputs = bootstrap_queues(moto, bucket="ckpt").outputs()
        for n in sizes:
            total = {"runners": n * args.rounds, "steps": args.rounds}
            for r in range(args.rounds):
                add(total, aws_round(n, moto, outputs, f"bench-{n}-{r}"))
            out["aws"][str(n)] = total
    out["wall_seconds"] = round(time.time() - started, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
