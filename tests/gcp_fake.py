"""A local stand-in for the GCP Batch API: no emulator exists, so one is served here.

``batch_server(clock)`` starts an in-process gRPC server implementing
``google.cloud.batch.v1.BatchService`` (CreateJob, GetJob, ListJobs, DeleteJob) with the real
proto-plus classes' (de)serializers, and yields the :class:`FakeBatch` "cloud" behind it: tests
script each job's life (QUEUED -> SCHEDULED -> RUNNING -> FAILED with exit code 50001 and the real
status-event text, ...) and inject gRPC errors. The cloud moves only when told (``advance()``,
``apply()``, ``settle()``). ``FakeBatch.client()`` is the real ``BatchServiceClient`` over an
insecure channel; ``FakeBatch.host`` is what an ``emulator_host`` connection extra points at.

Used by ``tests/integration/gcp`` (fixtures in its conftest) and ``tests/e2e/airflow``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from google.cloud import batch_v1
from google.cloud.batch_v1.services.batch_service.transports import BatchServiceGrpcTransport
from google.longrunning import operations_pb2

SERVICE = "google.cloud.batch.v1.BatchService"
JobState = batch_v1.JobStatus.State


class FakeClock:
    """Shared by the runner and the fake cloud: time moves only when a test (or sleep) says."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def preemption_text(zone: str, instance: str) -> str:
    return (
        f"Task state is updated from RUNNING to FAILED on zones/{zone}/instances/{instance} "
        "due to Spot Preemption with exit code 50001."
    )


def task_failure_text(zone: str, instance: str, code: int) -> str:
    if code == 50001:
        return preemption_text(zone, instance)
    why = {50005: " due to task run time exceeding the max run duration"}.get(code, "")
    return (
        f"Task state is updated from RUNNING to FAILED on zones/{zone}/instances/{instance}"
        f"{why} with exit code {code}."
    )


Step = str | tuple[str, int] | Callable[[batch_v1.Job], None]
"""A plan step: a state name, ("FAILED", exit_code), ("PREEMPTED_RETRIED", 50001) or a callable
run against the job (e.g. a worker that saves a checkpoint)."""


@dataclass
class FakeBatch:
    """The controllable cloud behind the gRPC server."""

    clock: FakeClock
    zone: str = "us-central1-a"
    jobs: dict[str, batch_v1.Job] = field(default_factory=dict)
    received: list[batch_v1.Job] = field(default_factory=list)  # CreateJob bodies, as sent
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (method, request)
    plans: deque[list[Step]] = field(default_factory=deque)
    port: int = 0
    _plan_of: dict[str, deque[Step]] = field(default_factory=dict)
    _faults: dict[str, deque[tuple[grpc.StatusCode, str, bool]]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    _deleting: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- what tests call -----------------------------------------------------------------------
    def client(self) -> batch_v1.BatchServiceClient:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return batch_v1.BatchServiceClient(transport=BatchServiceGrpcTransport(channel=channel))

    @property
    def host(self) -> str:
        """``host:port`` of the gRPC server (an ``emulator_host`` connection extra)."""
        return f"127.0.0.1:{self.port}"

    def plan(self, *steps: Step) -> None:
        """The life of the next job created (one call per expected job, in order)."""
        self.plans.append(list(steps))

    def fail_next(
        self, method: str, code: grpc.StatusCode, message: str, *, times: int = 1
    ) -> None:
        for _ in range(times):
            self._faults[method].append((code, message, False))

    def lose_next_reply(self, method: str) -> None:
        """Do the next ``method`` call, then answer UNAVAILABLE (the reply is lost)."""
        self._faults[method].append((grpc.StatusCode.UNAVAILABLE, "connection reset", True))

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    def requests(self, method: str) -> list[Any]:
        return [r for m, r in self.calls if m == method]

    def advance(self) -> None:
        """One tick of the cloud: each job takes the next step of its plan."""
        with self._lock:
            for name in list(self._deleting):
                self.jobs.pop(name, None)
            self._deleting.clear()
            for name, plan in self._plan_of.items():
                if plan and name in self.jobs:
                    self.apply(name, plan.popleft())

    def settle(self, name: str) -> None:
        """Play the rest of one job's plan now, step by step (the other jobs stay put)."""
        with self._lock:
            plan = self._plan_of.get(name, deque())
            while plan and name in self.jobs:
                self.apply(name, plan.popleft())

    def apply(self, name: str, step: Step) -> None:
        with self._lock:
            job = self.jobs[name]
            if callable(step):
                step(job)
            elif isinstance(step, tuple) and step[0] == "PREEMPTED_RETRIED":
                self._task_event(job, step[1], new_state=None)
            elif isinstance(step, tuple):
                self._task_event(job, step[1], new_state=JobState.FAILED)
            elif step != "WAIT":
                self.set_state(name, JobState[step])

    def set_state(self, name: str, state: batch_v1.JobStatus.State, text: str = "") -> None:
        with self._lock:
            job = self.jobs[name]
            old = job.status.state.name
            self._event(
                job,
                f"Job state is set from {old} to {state.name} for job {name}.{text}",
                "STATUS_CHANGED",
            )
            job.status.state = state

    # -- internals -----------------------------------------------------------------------------
    def _now(self) -> datetime:
        self.clock.advance(0.001)  # distinct, ordered event times
        return datetime.fromtimestamp(self.clock(), tz=UTC)

    def _event(self, job: batch_v1.Job, text: str, kind: str, code: int | None = None) -> None:
        event = batch_v1.StatusEvent(type_=kind, description=text, event_time=self._now())
        if code is not None:
            event.task_execution = batch_v1.TaskExecution(exit_code=code)
        job.status.status_events.append(event)
        job.update_time = self._now()

    def _task_event(self, job: batch_v1.Job, code: int, *, new_state) -> None:  # type: ignore[no-untyped-def]
        instance = str(secrets.randbelow(10**18))
        text = task_failure_text(self.zone, instance, code)
        self._event(job, text, "TASK_STATE_CHANGED", code)
        if new_state is not None:
            self.set_state(
                job.name,
                new_state,
                " Job failed due to task failure. Specifically, task with index 0 failed due "
                f'to the following task event: "{text}"',
            )

    def _fault(self, method: str, context: grpc.ServicerContext) -> bool:
        """Abort per an injected fault; True when the reply (not the work) is to be lost."""
        with self._lock:
            if not self._faults[method]:
                return False
            code, message, after = self._faults[method].popleft()
        if not after:
            context.abort(code, message)
        return True

    # -- the service ---------------------------------------------------------------------------
    def CreateJob(self, request: batch_v1.CreateJobRequest, context: grpc.ServicerContext):  # noqa: N802
        self.calls.append(("CreateJob", request))
        lose = self._fault("CreateJob", context)
        name = f"{request.parent}/jobs/{request.job_id}"
        with self._lock:
            self.received.append(batch_v1.Job.deserialize(batch_v1.Job.serialize(request.job)))
            if name in self.jobs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"Job {name} already exists")
            job = batch_v1.Job.deserialize(batch_v1.Job.serialize(request.job))
            job.name, job.uid = name, f"{request.job_id[:40]}-{secrets.token_hex(4)}"
            job.create_time = job.update_time = self._now()
            job.status.state = JobState.QUEUED
            self.jobs[name] = job
            self._plan_of[name] = deque(self.plans.popleft() if self.plans else [])
        if lose:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset by peer")
        return job

    def GetJob(self, request: batch_v1.GetJobRequest, context: grpc.ServicerContext):  # noqa: N802
        self.calls.append(("GetJob", request))
        self._fault("GetJob", context)
        with self._lock:
            if request.name not in self.jobs:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Job {request.name} not found")
            return batch_v1.Job.deserialize(batch_v1.Job.serialize(self.jobs[request.name]))

    def ListJobs(self, request: batch_v1.ListJobsRequest, context: grpc.ServicerContext):  # noqa: N802
        self.calls.append(("ListJobs", request))
        self._fault("ListJobs", context)
        with self._lock:
            jobs = [j for n, j in sorted(self.jobs.items()) if n.startswith(request.parent + "/")]
        start = int(request.page_token or 0)
        size = request.page_size or 2  # small pages: the client's pager must follow tokens
        page = jobs[start : start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return batch_v1.ListJobsResponse(jobs=page, next_page_token=token)

    def DeleteJob(self, request: batch_v1.DeleteJobRequest, context: grpc.ServicerContext):  # noqa: N802
        self.calls.append(("DeleteJob", request))
        self._fault("DeleteJob", context)
        with self._lock:
            if request.name not in self.jobs:
                context.abort(grpc.StatusCode.NOT_FOUND, f"Job {request.name} not found")
            self.set_state(request.name, JobState.DELETION_IN_PROGRESS)
            self._deleting.add(request.name)
            self._plan_of.pop(request.name, None)
        return operations_pb2.Operation(name=f"{request.name}/operations/delete", done=False)

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, req_cls, serialize):  # type: ignore[no-untyped-def]
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req_cls.deserialize, response_serializer=serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateJob": unary(
                    self.CreateJob, batch_v1.CreateJobRequest, batch_v1.Job.serialize
                ),
                "GetJob": unary(self.GetJob, batch_v1.GetJobRequest, batch_v1.Job.serialize),
                "ListJobs": unary(
                    self.ListJobs, batch_v1.ListJobsRequest, batch_v1.ListJobsResponse.serialize
                ),
                "DeleteJob": unary(
                    self.DeleteJob,
                    batch_v1.DeleteJobRequest,
                    operations_pb2.Operation.SerializeToString,
                ),
            },
        )


@contextlib.contextmanager
def batch_server(clock: FakeClock, *, workers: int = 4) -> Iterator[FakeBatch]:
    """A started gRPC server on 127.0.0.1 (free port) serving a fresh :class:`FakeBatch`."""
    cloud = FakeBatch(clock=clock)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((cloud.handler(),))
    cloud.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield cloud
    finally:
        server.stop(grace=None)
