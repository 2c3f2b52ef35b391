"""TerminationWatcher against the real local metadata server over real HTTP (no mocks)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from spot_workflows.backends.local.metadata import LocalMetadataServer
from spot_workflows.core.outcomes import NoticeKind
from spot_workflows.errors import ConfigError
from spot_workflows.runtime.worker.notices import TerminationWatcher

FAST = {"poll_interval": 0.1, "timeout": 0.3}


@pytest.fixture
def server():
    with LocalMetadataServer(hang_s=3.0) as srv:
        srv.add_instance("i-0abc")
        yield srv


def dead_endpoint() -> str:
    """An address where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def deadline_in(seconds: float) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def http(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    req.data = b"" if method == "PUT" else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


# -- AWS ---------------------------------------------------------------------------------------
def test_aws_interruption_notice_with_deadline(server):
    seen = []
    watcher = TerminationWatcher(
        source="aws", aws_endpoint=server.endpoint_for("i-0abc"), on_notice=seen.append, **FAST
    )
    assert watcher.poll_once() == [] and watcher.notice is None
    deadline = deadline_in(120)
    server.set_interruption("i-0abc", action="stop", deadline=deadline)
    [notice] = watcher.poll_once()
    assert notice.kind is NoticeKind.INTERRUPTION and notice.source == "aws"
    assert notice.action == "stop" and notice.deadline == deadline
    assert notice.instance_id == "i-0abc"
    assert watcher.notice == notice and seen == [notice]
    watcher.poll_once()
    assert seen == [notice]  # on_notice fires once per notice, not once per poll
    assert watcher.errors == 0


def test_other_instances_do_not_see_the_notice(server):
    server.add_instance("i-other")
    server.set_interruption("i-0abc", deadline=deadline_in(120))
    watcher = TerminationWatcher(source="aws", aws_endpoint=server.endpoint_for("i-other"), **FAST)
    assert watcher.poll_once() == [] and watcher.errors == 0


def test_rebalance_goes_to_on_notice_but_is_not_sticky(server):
    seen = []
    watcher = TerminationWatcher(
        source="aws", aws_endpoint=server.endpoint_for("i-0abc"), on_notice=seen.append, **FAST
    )
    server.set_rebalance("i-0abc", datetime(2026, 1, 1, 8, 17, tzinfo=UTC))
    [notice] = watcher.poll_once()
    assert notice.kind is NoticeKind.REBALANCE and notice.detail["noticeTime"].endswith("8:17:00Z")
    assert watcher.notice is None and watcher.wait(0.05) is None
    watcher.poll_once()
    assert [n.kind for n in seen] == [NoticeKind.REBALANCE]
    server.set_interruption("i-0abc", deadline=deadline_in(120))
    kinds = {n.kind for n in watcher.poll_once()}
    assert kinds == {NoticeKind.INTERRUPTION, NoticeKind.REBALANCE}
    assert watcher.notice.kind is NoticeKind.INTERRUPTION


def test_imdsv1_is_never_used_and_the_token_is_cached(server):
    watcher = TerminationWatcher(source="aws", aws_endpoint=server.endpoint_for("i-0abc"), **FAST)
    for _ in range(5):
        watcher.poll_once()
    seen = server.requests_seen("i-0abc")
    assert seen["PUT /latest/api/token"] == 1
    assert seen["GET /latest/meta-data/spot/instance-action"] == 5
    assert seen["GET /latest/meta-data/events/recommendations/rebalance"] == 5
    assert not [key for key in seen if key.endswith(("(no token)", "(bad token)"))]


def test_an_expired_token_is_refreshed_on_401(server):
    watcher = TerminationWatcher(source="aws", aws_endpoint=server.endpoint_for("i-0abc"), **FAST)
    watcher.poll_once()
    server.expire_tokens()
    server.set_interruption("i-0abc", deadline=deadline_in(60))
    assert [n.kind for n in watcher.poll_once()] == [NoticeKind.INTERRUPTION]
    seen = server.requests_seen("i-0abc")
    assert seen["PUT /latest/api/token"] == 2 and watcher.errors == 0
    assert seen["GET /latest/meta-data/spot/instance-action (bad token)"] == 1


def test_the_token_is_refreshed_before_it_expires(server):
    now = [1_000_000.0]
    watcher = TerminationWatcher(
        source="aws", aws_endpoint=server.endpoint_for("i-0abc"), clock=lambda: now[0], **FAST
    )
    watcher.poll_once()
    now[0] += 21600 - 200  # inside the refresh margin of the 6-hour TTL
    watcher.poll_once()
    assert server.requests_seen("i-0abc")["PUT /latest/api/token"] == 2
    assert not [k for k in server.requests_seen("i-0abc") if "token)" in k]


def test_the_token_is_never_logged(server, caplog):
    caplog.set_level(logging.DEBUG, logger="spot_workflows")
    watcher = TerminationWatcher(source="aws", aws_endpoint=server.endpoint_for("i-0abc"), **FAST)
    watcher.poll_once()
    token = watcher._token
    server.corrupt("i-0abc", "http500")
    watcher.poll_once()
    assert token and caplog.records and token not in caplog.text


# -- GCE ---------------------------------------------------------------------------------------
def test_gce_preempted_and_maintenance(server):
    host = server.endpoint_for("i-0abc").removeprefix("http://")  # GCE_METADATA_HOST style
    watcher = TerminationWatcher(source="gcp", gce_endpoint=host, **FAST)
    assert watcher.poll_once() == []
    server.set_maintenance("i-0abc", "MIGRATE_ON_HOST_MAINTENANCE")
    assert watcher.poll_once() == [] and watcher.errors == 0
    server.set_gce_preempted("i-0abc", True)
    [notice] = watcher.poll_once()
    assert notice.kind is NoticeKind.INTERRUPTION and notice.source == "gcp"
    assert 25 < (notice.deadline - datetime.now(UTC)).total_seconds() <= 30
    seen = server.requests_seen("i-0abc")
    assert not [key for key in seen if key.endswith("(no flavor)")]
    assert not [key for key in seen if key.startswith(("PUT", "GET /latest"))]


def test_gce_terminate_on_host_maintenance_is_sticky(server):
    watcher = TerminationWatcher(source="gcp", gce_endpoint=server.url, **FAST)
    server.set_maintenance("default", "TERMINATE_ON_HOST_MAINTENANCE")
    [notice] = watcher.poll_once()
    assert notice.kind is NoticeKind.MAINTENANCE and watcher.notice == notice


def test_gce_long_poll_returns_when_the_value_changes(server):
    watcher = TerminationWatcher(
        source="gcp", gce_endpoint=server.url, poll_interval=5, timeout=1, gce_wait_for_change=True
    )
    assert watcher.poll_once() == []  # first round: a plain GET, to learn the ETag
    threading.Timer(0.3, server.set_gce_preempted, ("default", True)).start()
    started = time.monotonic()
    [notice] = watcher.poll_once()
    assert notice.kind is NoticeKind.INTERRUPTION and time.monotonic() - started < 3


# -- faults ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["garbage", "http500", "hang"])
def test_the_thread_survives_faults_and_later_sees_a_real_notice(server, mode, caplog):
    caplog.set_level(logging.WARNING, logger="spot_workflows")
    watcher = TerminationWatcher(
        source="local", aws_endpoint=server.endpoint_for("i-0abc"), poll_interval=0.05, timeout=0.2
    )
    watcher.poll_once()  # learn the token and instance id while the endpoint is healthy
    server.corrupt("i-0abc", mode)
    with watcher:
        deadline = time.monotonic() + 5
        while watcher.errors < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.errors >= 6 and watcher.notice is None
        assert watcher._thread is not None and watcher._thread.is_alive()
        server.corrupt("i-0abc", None)
        server.set_interruption("i-0abc", deadline=deadline_in(90))
        notice = watcher.wait(5)
    assert notice is not None and notice.kind is NoticeKind.INTERRUPTION
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) < watcher.errors  # rate-limited, not one line per failed check


def test_a_dead_endpoint_is_counted_not_raised():
    watcher = TerminationWatcher(source="aws", aws_endpoint=f"http://{dead_endpoint()}", **FAST)
    assert watcher.poll_once() == [] and watcher.errors == 1
    with watcher:  # the background loop keeps counting (and never raises)
        deadline = time.time() + 30
        while watcher.errors < 3 and time.time() < deadline:
            time.sleep(0.05)
    assert watcher.errors >= 3


# -- endpoints and auto detection ----------------------------------------------------------------
def test_endpoints_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.endpoint_for("i-0abc") + "/")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1234")
    watcher = TerminationWatcher(source="auto", **FAST)
    assert watcher.aws_endpoint == server.endpoint_for("i-0abc")
    assert watcher.gce_endpoint == "http://127.0.0.1:1234"
    monkeypatch.delenv("AWS_EC2_METADATA_SERVICE_ENDPOINT")
    monkeypatch.delenv("GCE_METADATA_HOST")
    watcher = TerminationWatcher(source="auto", **FAST)
    assert watcher.aws_endpoint == "http://169.254.169.254"
    assert watcher.gce_endpoint == "http://metadata.google.internal"
    with pytest.raises(ConfigError, match="needs a metadata endpoint"):
        TerminationWatcher(source="local")
    with pytest.raises(ConfigError):
        TerminationWatcher(source="azure")


def test_local_speaks_both_protocols(server):
    watcher = TerminationWatcher(source="local", aws_endpoint=server.endpoint_for("i-0abc"), **FAST)
    server.set_gce_preempted("i-0abc", True)
    [notice] = watcher.poll_once()
    assert notice.source == "local" and notice.detail["protocol"] == "gce"


def test_auto_picks_aws_then_gce_then_gives_up_quietly(server, caplog):
    caplog.set_level(logging.WARNING, logger="spot_workflows")
    aws = TerminationWatcher(
        source="auto", aws_endpoint=server.url, gce_endpoint=dead_endpoint(), **FAST
    )
    aws.poll_once()
    assert aws.mode == "aws"
    gce = TerminationWatcher(
        source="auto", aws_endpoint=f"http://{dead_endpoint()}", gce_endpoint=server.url, **FAST
    )
    gce.poll_once()
    assert gce.mode == "gcp"
    none = TerminationWatcher(
        source="auto",
        aws_endpoint=f"http://{dead_endpoint()}",
        gce_endpoint=dead_endpoint(),
        **FAST,
    )
    assert none.poll_once() == [] and none.poll_once() == [] and none.mode is None
    assert caplog.text.count("relying on SIGTERM only") == 1


# -- the server's own protocol rules -------------------------------------------------------------
def test_server_speaks_imdsv2_and_gce_rules(server):
    base = server.endpoint_for("i-0abc")
    assert http(f"{base}/latest/api/token", "PUT")[0] == 400  # no TTL header
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
    status, token, _ = http(f"{base}/latest/api/token", "PUT", ttl)
    assert status == 200 and token
    assert http(f"{base}/latest/meta-data/instance-id")[0] == 401  # IMDSv1 refused
    auth = {"X-aws-ec2-metadata-token": token.decode()}
    assert http(f"{base}/latest/meta-data/instance-id", headers=auth)[1] == b"i-0abc"
    assert http(f"{base}/latest/meta-data/spot/instance-action", headers=auth)[0] == 404
    server.set_interruption("i-0abc", deadline=datetime(2026, 1, 1, 8, 22, tzinfo=UTC))
    body = http(f"{base}/latest/meta-data/spot/instance-action", headers=auth)[1]
    assert body == b'{"action": "terminate", "time": "2026-01-01T08:22:00Z"}'
    other = {"X-aws-ec2-metadata-token": http(f"{server.url}/latest/api/token", "PUT", ttl)[1]}
    assert http(f"{base}/latest/meta-data/instance-id", headers=other)[0] == 401  # other instance
    gce = f"{base}/computeMetadata/v1/instance/preempted"
    assert http(gce)[0] == 403
    status, body, headers = http(gce, headers={"Metadata-Flavor": "Google"})
    assert (status, body, headers["Metadata-Flavor"]) == (200, b"FALSE", "Google")
    assert http(f"{server.url}/i-nope/latest/api/token", "PUT", ttl)[0] == 404
    assert server.requests_seen("i-0abc")["GET /latest/meta-data/instance-id (no token)"] == 1
