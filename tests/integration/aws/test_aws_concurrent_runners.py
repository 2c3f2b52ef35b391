"""Several runners of one step at once on AWS Batch (moto server) with the ledger on S3: exactly
one Batch job per attempt number, every job in the ledger (compare-and-swap with IfMatch /
IfNoneMatch on the ledger object)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from spot_workflows.config import SpotPolicy, StepSpec
from spot_workflows.core.outcomes import Outcome
from spot_workflows.ledger import Ledger
from spot_workflows.runner import StepRunner

RECLAIM = "Host EC2 (instance i-0abc123) terminated."


@pytest.mark.parametrize("n", [2, 8])
def test_runners_started_at_once_submit_one_batch_job_per_attempt(infra, market_factory, n):
    key = f"concurrent-{n}"
    spec = StepSpec(
        key=key,
        command=["python", "train.py"],
        image="public.ecr.aws/docker/library/python:3.11",
        checkpoint_uri=f"s3://ckpt/{key}",
        vcpus=2,
        memory_mib=4096,
        timeout_s=3600,
    )
    market = market_factory([RECLAIM])  # the first spot attempt is reclaimed, then jobs succeed
    lock = threading.Lock()
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def on_event(event) -> None:
        with lock:
            market.on_event(event)

    def run(i: int) -> None:
        runner = StepRunner(
            spec=spec,
            backend=infra.backend(),
            store=infra.store(key),
            policy=SpotPolicy(preemption_budget=2),
            poll_interval=0.05,
            on_event=on_event,
        )
        barrier.wait(timeout=60)
        try:
            results[i] = runner.run()
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(getattr(r, "succeeded", False) for r in results), results

    jobs = [
        j
        for queue in (infra.outputs["spot_queue"], infra.outputs["on_demand_queue"])
        for j in infra.jobs(queue)
        if j["jobName"].startswith(key)
    ]
    # what Batch actually received: one job per attempt number, and each of them in the ledger
    per_attempt = Counter(int(j["jobName"].rsplit("-a", 1)[1]) for j in jobs)
    ledger = Ledger.open(infra.store(key), key)
    assert sorted(per_attempt) == [a.number for a in ledger.attempts], jobs
    assert set(per_attempt.values()) == {1}, per_attempt
    assert {j["jobId"] for j in jobs} == {a.job_id for a in ledger.attempts}
    # (a runner may see the injected failure before its reclaim reason lands: then the first
    # attempts read as app errors and are retried; the step still ends with one success)
    assert len(ledger.attempts) >= 2 and ledger.attempts[-1].outcome is Outcome.SUCCEEDED
