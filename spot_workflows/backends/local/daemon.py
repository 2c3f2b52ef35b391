"""The local spot cloud daemon: ``spot-workflows local serve`` (or started on first use).

One daemon per state directory. It listens on 127.0.0.1 only, on a port it picks, and answers
only clients that present the token in ``STATE_DIR/token`` (mode 0600). ``daemon.json`` says
where it listens; ``daemon.lock`` (held while it runs) makes it the only one: a second daemon on
the same directory exits at once, so two processes racing to start one get one.

HTTP API (JSON, ``Authorization: Bearer TOKEN``): ``GET /v1/status``, ``GET /v1/jobs``,
``POST /v1/jobs`` (submit), ``POST /v1/describe``, ``POST /v1/jobs/ID/cancel``,
``POST /v1/jobs/ID/reclaim``, ``GET /v1/find?name=``, ``POST /v1/market/available``,
``POST /v1/stop`` (stop every job, then exit).

SIGTERM or SIGINT ends the daemon but not its jobs (they run in their own sessions); the next
daemon re-adopts them. ``--idle-exit-s`` ends it after that long with no job and no request.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hmac
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from spot_workflows.backends.local.cloud import LocalCloud
from spot_workflows.backends.local.jobs import read_json, write_json_atomic
from spot_workflows.errors import NotFoundError, SpotWorkflowsError

log = logging.getLogger("spot_workflows.local_cloud")

TOKEN_FILE, INFO_FILE, LOCK_FILE = "token", "daemon.json", "daemon.lock"
API_VERSION = 1


def ensure_token(state_dir: Path) -> str:
    """The state directory's token, created (mode 0600) if there is none."""
    path = state_dir / TOKEN_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class Daemon:
    def __init__(self, state_dir: Path, *, tick_s: float = 0.05, idle_exit_s: float | None = None):
        self.state_dir = state_dir
        self.tick_s = tick_s
        self.idle_exit_s = idle_exit_s
        self.stopping = threading.Event()
        previous = read_json(state_dir / INFO_FILE) or {}
        self.cloud = LocalCloud(state_dir, metadata_port=int(previous.get("metadata_port") or 0))
        self.token = ensure_token(state_dir)
        self.httpd: ThreadingHTTPServer | None = None

    def serve(self) -> int:
        self.cloud.start()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.daemon = self
        info = {
            "pid": os.getpid(),
            "port": self.httpd.server_address[1],
            "metadata_port": self.cloud.metadata.port,
            "started_at": time.time(),
            "api": API_VERSION,
        }
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}).start()
        write_json_atomic(self.state_dir / INFO_FILE, info)
        log.info("local spot cloud on 127.0.0.1:%s for %s", info["port"], self.state_dir)
        try:
            while not self.stopping.is_set():
                # tick fast while jobs live; idle, sleep until a request wakes the loop
                self.cloud.wakeup.wait(self.tick_s if self.cloud.live_jobs else 1.0)
                self.cloud.wakeup.clear()
                if self.stopping.is_set():
                    break
                try:
                    self.cloud.tick(time.time())
                except Exception:  # the market must never die silently
                    log.exception("local spot cloud tick failed")
                if self._idle():
                    log.info("idle for %.0fs with no job: exiting", self.idle_exit_s)
                    break
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.cloud.close()
            if (read_json(self.state_dir / INFO_FILE) or {}).get("pid") == os.getpid():
                with contextlib.suppress(OSError):
                    (self.state_dir / INFO_FILE).unlink()
        return 0

    def _idle(self) -> bool:
        if not self.idle_exit_s or self.cloud.live_jobs:
            return False
        return time.time() - self.cloud.last_activity > self.idle_exit_s

    # -- requests ----------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, body: dict) -> tuple[int, object]:
        cloud = self.cloud
        cloud.last_activity = time.time()
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            return 404, {"error": f"no such endpoint {path}"}
        route = (method, *parts[1:])
        if route == ("GET", "status"):
            return 200, {
                "pid": os.getpid(),
                "state_dir": str(self.state_dir),
                "live_jobs": cloud.live_jobs,
                "jobs": sum(1 for _ in cloud.jobs_dir.iterdir()),
                "metadata_url": cloud.metadata.url,
                "api": API_VERSION,
            }
        if route == ("GET", "jobs"):
            return 200, cloud.jobs()
        if route == ("POST", "jobs"):
            return 200, {"job_id": cloud.submit(body)}
        if route == ("POST", "describe"):
            found = cloud.describe(list(body.get("job_ids") or []))
            return 200, {k: v.model_dump(mode="json") for k, v in found.items()}
        if route == ("GET", "find"):
            return 200, {"job_id": cloud.find(query.get("name", [""])[0])}
        if route == ("POST", "market", "available"):
            step_key = str(body.get("step_key") or "")
            placement = body.get("placement") or None
            market = body.get("market") or {}
            return 200, {"available": cloud.spot_available(step_key, market, placement)}
        if len(route) == 4 and route[0] == "POST" and route[1] == "jobs":
            if route[3] == "cancel":
                cloud.cancel(route[2], reason=str(body.get("reason") or "cancelled"))
                return 200, {}
            if route[3] == "reclaim":
                cloud.reclaim(route[2])
                return 200, {}
        if route == ("POST", "stop"):
            stopped = cloud.stop_all(reason=str(body.get("reason") or "the local cloud stopped"))
            self.stopping.set()
            cloud.wakeup.set()
            return 200, {"stopped_jobs": stopped}
        return 404, {"error": f"no such endpoint {method} {path}"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    daemon: Daemon

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up are normal


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _reply(self, status: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        daemon = self.server.daemon
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), daemon.token.encode()):
            self._reply(401, {"error": "missing or wrong token (see the state directory)"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
        except ValueError as exc:
            self._reply(400, {"error": f"bad request: {exc}"})
            return
        split = urlsplit(self.path)
        try:
            status, doc = daemon.handle(method, split.path, parse_qs(split.query), body)
        except NotFoundError as exc:
            status, doc = 404, {"error": str(exc), "type": "NotFoundError"}
        except SpotWorkflowsError as exc:
            status, doc = 400, {"error": str(exc), "type": type(exc).__name__}
        except Exception as exc:  # report, never kill the daemon
            log.exception("request %s %s failed", method, self.path)
            status, doc = 500, {"error": f"{type(exc).__name__}: {exc}"}
        self._reply(status, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spot-workflows local serve")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--idle-exit-s", type=float, default=None)
    ap.add_argument("--tick-s", type=float, default=0.05)
    args = ap.parse_args(argv)
    state_dir = Path(args.state_dir).expanduser().resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    lock = open(state_dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"a local spot cloud already serves {state_dir}", file=sys.stderr)
        return 0
    daemon = Daemon(state_dir, tick_s=args.tick_s, idle_exit_s=args.idle_exit_s)

    def stop(*_: object) -> None:
        daemon.stopping.set()
        daemon.cloud.wakeup.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
