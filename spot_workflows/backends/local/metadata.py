"""A local metadata endpoint that speaks the AWS IMDSv2 and GCE metadata protocols.

One HTTP server (127.0.0.1, any free port) simulates many instances, each under its own path
prefix (``endpoint_for("i-abc")`` -> ``http://127.0.0.1:PORT/i-abc``); the bare root is the
instance ``default``. Point a worker at it with ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (the URL) or
``GCE_METADATA_HOST`` (the URL without ``http://``). The Python methods are the control API.

AWS: ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600; 400
without it); every ``GET /latest/...`` needs a valid ``X-aws-ec2-metadata-token`` (401 otherwise:
IMDSv1 is refused). GCE: every request needs ``Metadata-Flavor: Google`` (403 otherwise);
``?wait_for_change=true`` long-polls (``last_etag``, ``timeout_sec``). ``requests_seen`` counts
requests per instance as ``"METHOD /path"``, with `` (no token)`` / `` (bad token)`` /
`` (no flavor)`` appended to the ones refused.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from spot_workflows.errors import BackendError, ConfigError

DEFAULT_INSTANCE = "default"
CORRUPT_MODES = ("garbage", "http500", "hang")
GARBAGE = b"\x00\xff<html>not metadata {{{ \xfe\x80" + b"\x07" * 32
_PROTOCOL_ROOTS = ("latest", "computeMetadata")


def _aws_time(when: datetime) -> str:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _etag(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@dataclass
class _Instance:
    instance_id: str
    action: dict | None = None
    rebalance: dict | None = None
    preempted: bool = False
    maintenance: str = "NONE"
    corrupt: str | None = None
    requests: Counter = field(default_factory=Counter)
    notices_served: int = 0  # answers that carried an interruption (AWS action, GCE TRUE)


class LocalMetadataServer:
    """AWS IMDSv2 + GCE metadata for simulated instances. Use as a context manager."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, hang_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.hang_s = hang_s
        self._cond = threading.Condition()
        self._instances: dict[str, _Instance] = {DEFAULT_INSTANCE: _Instance(DEFAULT_INSTANCE)}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (instance id, expires at)
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> LocalMetadataServer:
        if self._httpd is None:
            self._stopping.clear()
            self._httpd = _Server((self.host, self.port), _Handler)
            self._httpd.owner = self
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="local-metadata",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalMetadataServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise BackendError("the local metadata server is not started: call start() first")
        return f"http://{self.host}:{self.port}"

    def endpoint_for(self, instance_id: str) -> str:
        """Base URL of one simulated instance (what AWS_EC2_METADATA_SERVICE_ENDPOINT gets)."""
        return f"{self.url}/{instance_id}"

    # -- control API (thread-safe) ---------------------------------------------------------
    def add_instance(self, instance_id: str) -> None:
        with self._cond:
            self._get(instance_id)

    def set_interruption(
        self, instance_id: str, *, action: str = "terminate", deadline: datetime
    ) -> None:
        """Make ``spot/instance-action`` (and nothing else) show an interruption."""
        self._update(instance_id, action={"action": action, "time": _aws_time(deadline)})

    def set_rebalance(self, instance_id: str, notice_time: datetime) -> None:
        self._update(instance_id, rebalance={"noticeTime": _aws_time(notice_time)})

    def set_gce_preempted(self, instance_id: str, preempted: bool) -> None:
        self._update(instance_id, preempted=bool(preempted))

    def set_maintenance(self, instance_id: str, value: str) -> None:
        """``NONE``, ``MIGRATE_ON_HOST_MAINTENANCE`` or ``TERMINATE_ON_HOST_MAINTENANCE``."""
        self._update(instance_id, maintenance=str(value))

    def clear(self, instance_id: str) -> None:
        """Back to no notices and no fault."""
        self._update(instance_id, action=None, rebalance=None, preempted=False, maintenance="NONE")
        self.corrupt(instance_id, None)

    def corrupt(self, instance_id: str, mode: str | None) -> None:
        """Fault injection on the instance's metadata GETs (the token PUT still works).

        ``garbage``: 200 with a junk body; ``http500``: 500; ``hang``: answer only after
        ``hang_s`` seconds (longer than a client's timeout); ``None``: behave again.
        """
        if mode is not None and mode not in CORRUPT_MODES:
            raise ConfigError(f"corrupt mode {mode!r} must be one of {CORRUPT_MODES} or None")
        self._update(instance_id, corrupt=mode)

    def expire_tokens(self) -> None:
        """Invalidate every IMDSv2 token issued so far (clients must fetch a new one on 401)."""
        with self._cond:
            self._tokens.clear()

    def notices_served(self, instance_id: str) -> int:
        """How many answers to the instance carried its interruption notice (the AWS
        ``spot/instance-action`` document or GCE ``preempted`` = ``TRUE``)."""
        with self._cond:
            inst = self._instances.get(instance_id)
            return inst.notices_served if inst is not None else 0

    def remove_instance(self, instance_id: str) -> None:
        """Forget a simulated instance (its job is over)."""
        with self._cond:
            if instance_id != DEFAULT_INSTANCE:
                self._instances.pop(instance_id, None)

    def requests_seen(self, instance_id: str = DEFAULT_INSTANCE) -> Counter:
        """A copy of the instance's request counter, keyed ``"METHOD /path[ (refusal)]"``."""
        with self._cond:
            return Counter(self._get(instance_id).requests)

    # -- internals ------------------------------------------------------------------------------
    def _get(self, instance_id: str) -> _Instance:
        if not instance_id or "/" in instance_id or instance_id in _PROTOCOL_ROOTS:
            raise ConfigError(
                f"instance id {instance_id!r} must be one path segment, not 'latest' or "
                "'computeMetadata'"
            )
        if instance_id not in self._instances:
            self._instances[instance_id] = _Instance(instance_id)
        return self._instances[instance_id]

    def _update(self, instance_id: str, **changes: object) -> None:
        with self._cond:
            inst = self._get(instance_id)
            for name, value in changes.items():
                setattr(inst, name, value)
            self._cond.notify_all()

    def _route(self, path: str) -> tuple[_Instance | None, str]:
        """(instance, protocol path) for a request path; instance None if unknown."""
        parts = path.split("/", 2)  # "", first segment, rest
        first = parts[1] if len(parts) > 1 else ""
        with self._cond:
            if first in _PROTOCOL_ROOTS:
                return self._instances[DEFAULT_INSTANCE], path
            inst = self._instances.get(first)
        return inst, "/" + (parts[2] if len(parts) > 2 else "")

    def _gce_value(self, inst: _Instance, path: str) -> str | None:
        if path == "/computeMetadata/v1/instance/preempted":
            return "TRUE" if inst.preempted else "FALSE"
        if path == "/computeMetadata/v1/instance/maintenance-event":
            return inst.maintenance
        if path == "/computeMetadata/v1/instance/id":
            return str(int(hashlib.sha256(inst.instance_id.encode()).hexdigest()[:15], 16))
        if path == "/computeMetadata/v1/instance/name":
            return inst.instance_id
        return None

    def _aws_value(self, inst: _Instance, path: str) -> str | None:
        if path == "/latest/meta-data/spot/instance-action":
            return json.dumps(inst.action) if inst.action else None
        if path == "/latest/meta-data/events/recommendations/rebalance":
            return json.dumps(inst.rebalance) if inst.rebalance else None
        if path == "/latest/meta-data/instance-id":
            return inst.instance_id
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LocalMetadataServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out and hang up are normal here


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "LocalMetadata/1.0"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _send(self, status: int, body: bytes | str, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        inst, path = owner._route(split.path)
        if inst is None:
            self._send(404, "no such simulated instance")
            return
        key = f"{method} {path}"
        if path.startswith("/latest/"):
            self._aws(owner, inst, method, path, key)
        elif path.startswith("/computeMetadata/"):
            self._gce(owner, inst, method, path, key, parse_qs(split.query))
        else:
            self._count(owner, inst, key)
            self._send(404, "Not Found")

    def _count(self, owner: LocalMetadataServer, inst: _Instance, key: str) -> None:
        with owner._cond:
            inst.requests[key] += 1

    def _fault(self, owner: LocalMetadataServer, inst: _Instance) -> bool:
        """Apply the instance's fault mode; True if the request was answered by it."""
        mode = inst.corrupt
        if mode == "hang":
            owner._stopping.wait(owner.hang_s)
            return False
        if mode == "http500":
            self._send(500, "Internal Server Error")
            return True
        if mode == "garbage":
            self._send(200, GARBAGE)
            return True
        return False

    # -- AWS IMDSv2 -----------------------------------------------------------------------
    def _aws(
        self, owner: LocalMetadataServer, inst: _Instance, method: str, path: str, key: str
    ) -> None:
        if path == "/latest/api/token":
            self._count(owner, inst, key)
            if method != "PUT":
                self._send(405, "Method Not Allowed")
                return
            if self.headers.get("X-Forwarded-For") is not None:
                self._send(403, "Forbidden")  # IMDSv2 refuses proxied token requests
                return
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                self._send(400, "Missing or invalid X-aws-ec2-metadata-token-ttl-seconds")
                return
            token = secrets.token_urlsafe(32)
            with owner._cond:
                owner._tokens[token] = (inst.instance_id, time.time() + int(ttl))
            self._send(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
            return
        if method != "GET":
            self._count(owner, inst, key)
            self._send(405, "Method Not Allowed")
            return
        token = self.headers.get("X-aws-ec2-metadata-token")
        with owner._cond:
            issued = owner._tokens.get(token or "")
        if (
            token is None
            or issued is None
            or issued[0] != inst.instance_id
            or time.time() > issued[1]
        ):
            self._count(owner, inst, f"{key} ({'no' if token is None else 'bad'} token)")
            self._send(401, "Unauthorized")
            return
        self._count(owner, inst, key)
        if self._fault(owner, inst):
            return
        value = owner._aws_value(inst, path)
        if value is None:
            self._send(404, "Not Found")
        else:
            if path == "/latest/meta-data/spot/instance-action":
                with owner._cond:
                    inst.notices_served += 1
            self._send(200, value)

    # -- GCE ---------------------------------------------------------------------------------
    def _gce(
        self,
        owner: LocalMetadataServer,
        inst: _Instance,
        method: str,
        path: str,
        key: str,
        query: dict[str, list[str]],
    ) -> None:
        flavor = {"Metadata-Flavor": "Google"}
        if self.headers.get("Metadata-Flavor") != "Google":
            self._count(owner, inst, f"{key} (no flavor)")
            self._send(403, "Missing Metadata-Flavor:Google header.", flavor)
            return
        self._count(owner, inst, key)
        if method != "GET":
            self._send(405, "Method Not Allowed", flavor)
            return
        if self._fault(owner, inst):
            return
        with owner._cond:
            value = owner._gce_value(inst, path)
            if value is not None and query.get("wait_for_change", [""])[0].lower() == "true":
                value = self._long_poll(owner, inst, path, value, query)
        if value is None:
            self._send(404, "Not Found", flavor)
        else:
            if path == "/computeMetadata/v1/instance/preempted" and value == "TRUE":
                with owner._cond:
                    inst.notices_served += 1
            self._send(200, value, {**flavor, "ETag": _etag(value)})

    def _long_poll(
        self,
        owner: LocalMetadataServer,
        inst: _Instance,
        path: str,
        value: str,
        query: dict[str, list[str]],
    ) -> str:
        """Called holding owner._cond: wait until the value's etag differs from the client's."""
        last = query.get("last_etag", [_etag(value)])[0]
        try:
            timeout = min(float(query.get("timeout_sec", ["60"])[0]), 300.0)
        except ValueError:
            timeout = 60.0
        end = time.monotonic() + max(0.0, timeout)
        while _etag(value) == last and not owner._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            owner._cond.wait(left)
            value = owner._gce_value(inst, path) or value
        return value
