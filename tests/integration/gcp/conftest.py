"""Local stand-ins for GCP: no cloud, real clients.

* ``batch``: an in-process gRPC server implementing ``google.cloud.batch.v1.BatchService``
  (CreateJob, GetJob, ListJobs, DeleteJob) with the real proto-plus classes' (de)serializers, and
  a small controllable "cloud" behind it: tests script each job's life (QUEUED -> SCHEDULED ->
  RUNNING -> FAILED with exit code 50001 and the real status-event text, ...) and inject gRPC
  errors. ``batch.client()`` is the real ``BatchServiceClient`` over an insecure channel.
  The fake itself lives in ``tests/gcp_fake.py`` (the Airflow e2e tests use it too).
* ``gcs``: ``gcp-storage-emulator`` in-process with ``STORAGE_EMULATOR_HOST`` set, used through
  gcsfs by the real ``CheckpointStore``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from gcp_fake import FakeBatch, FakeClock, batch_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def batch(clock: FakeClock) -> Iterator[FakeBatch]:
    with batch_server(clock) as cloud:
        yield cloud


@pytest.fixture(scope="session")
def gcs():
    """gcp-storage-emulator with bucket ``spot-ckpt``; yields storage options for gs:// stores."""
    import fsspec
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="spot-ckpt")
    server.start()
    port = server._api._httpd.server_address[1]
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    # gcsfs >= 2026 defaults to ExtendedGcsFileSystem, which first asks the gRPC storage-control
    # API for the bucket layout; the emulator speaks only JSON/HTTP, so use the core filesystem.
    for proto in ("gs", "gcs"):
        fsspec.register_implementation(proto, "gcsfs.core.GCSFileSystem", clobber=True)
    try:
        # The endpoint is part of the options so gcsfs's instance cache (keyed by options, not by
        # STORAGE_EMULATOR_HOST) never hands a later test a client for an earlier test's server.
        yield {"token": "anon", "endpoint_url": f"http://127.0.0.1:{port}"}
    finally:
        server.stop()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
