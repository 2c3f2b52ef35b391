"""Termination notices seen from inside the worker: AWS IMDSv2 and GCE metadata.

The ``parse_*`` functions are pure (no I/O, no clock): they turn one metadata answer into a
:class:`TerminationNotice`, ``None`` (no notice), or :class:`NoticeError` for anything else, and
nothing else escapes them whatever the input. :class:`TerminationWatcher` polls the endpoints
(AWS: IMDSv2 only, never IMDSv1) and never lets a bad answer or a dead endpoint kill its thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from spot_workflows.core.outcomes import NoticeKind, TerminationNotice
from spot_workflows.errors import ConfigError, NoticeError
from spot_workflows.runtime.worker.notice_parsers import (  # noqa: F401  (re-exported)
    _INSTANCE_ID,
    AWS_DEFAULT_ENDPOINT,
    AWS_INSTANCE_ACTION,
    AWS_INSTANCE_ID,
    AWS_REBALANCE,
    AWS_TOKEN_PATH,
    AWS_TOKEN_TTL_S,
    GCE_DEFAULT_HOST,
    GCE_INSTANCE_ID,
    GCE_MAINTENANCE,
    GCE_NOTICE_S,
    GCE_PREEMPTED,
    MAX_BODY,
    SOURCES,
    STICKY,
    parse_aws_instance_action,
    parse_aws_rebalance,
    parse_gce_maintenance,
    parse_gce_preempted,
)

log = logging.getLogger("spot_workflows.runtime.worker.notices")
_STICKY = (*STICKY, NoticeKind.HANDOFF)  # a handoff is acted on like a reclaim: save, exit 75


# -- endpoints ---------------------------------------------------------------------------------
def _with_scheme(value: str) -> str:
    value = value.strip().rstrip("/")
    return value if value.startswith(("http://", "https://")) else f"http://{value}"


def resolve_endpoints(
    source: str, aws_endpoint: str | None, gce_endpoint: str | None
) -> tuple[str, str]:
    """(AWS base URL, GCE base URL) from the arguments, the environment, then the defaults."""
    aws = aws_endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or None
    gce = gce_endpoint or os.environ.get("GCE_METADATA_HOST") or None
    if source == "local":
        if not (aws or gce):
            raise ConfigError(
                "source 'local' needs a metadata endpoint: pass aws_endpoint/gce_endpoint or set "
                "AWS_EC2_METADATA_SERVICE_ENDPOINT (e.g. http://127.0.0.1:8123/i-abc)"
            )
        aws, gce = aws or gce, gce or aws
    return _with_scheme(aws or AWS_DEFAULT_ENDPOINT), _with_scheme(gce or GCE_DEFAULT_HOST)


# -- the watcher -------------------------------------------------------------------------------
class TerminationWatcher:
    """Polls the metadata endpoints for termination notices (in a daemon thread or by hand).

    ``notice`` is the first INTERRUPTION / MAINTENANCE / HANDOFF notice (sticky); REBALANCE
    notices go to ``on_notice`` only. ``on_notice`` runs once per distinct notice, on the polling
    thread. ``checks``: more notice sources polled each round whatever the metadata mode (the
    handoff marker in the checkpoint store): each returns a notice or None.
    """

    def __init__(
        self,
        *,
        source: str = "auto",
        aws_endpoint: str | None = None,
        gce_endpoint: str | None = None,
        poll_interval: float = 5.0,
        timeout: float = 2.0,
        on_notice: Callable[[TerminationNotice], None] | None = None,
        clock: Callable[[], float] = time.time,
        gce_wait_for_change: bool = False,
        log_every_s: float = 60.0,
        checks: Sequence[Callable[[], TerminationNotice | None]] = (),
    ) -> None:
        if source not in SOURCES:
            raise ConfigError(f"notice source {source!r} must be one of {', '.join(SOURCES)}")
        if poll_interval <= 0 or timeout <= 0:
            raise ConfigError("poll_interval and timeout must be > 0 seconds")
        self.source = source
        self.aws_endpoint, self.gce_endpoint = resolve_endpoints(source, aws_endpoint, gce_endpoint)
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.on_notice = on_notice
        self.clock = clock
        self.gce_wait_for_change = gce_wait_for_change
        self.log_every_s = log_every_s
        self.checks = tuple(checks)
        self.errors = 0
        self.last_error: str | None = None
        self.mode: str | None = None if source == "auto" else source  # aws | gcp | local | None
        self.instance_id: str | None = None
        self._want_id = True
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._token: str | None = None
        self._token_expires = 0.0
        self._gce_etag: str | None = None
        self._detect_at = 0.0
        self._warned_none = False
        self._last_log: float | None = None
        self._suppressed = 0
        self._notice: TerminationNotice | None = None
        self._delivered: set[tuple] = set()
        self._seen = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- public -----------------------------------------------------------------------------
    @property
    def notice(self) -> TerminationNotice | None:
        return self._notice

    def start(self) -> TerminationWatcher:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="spot-notices", daemon=True)
            self._thread.start()
        return self

    def stop(self, *, wait: bool = True) -> None:
        """Stop polling; ``wait`` joins the thread (it may sit in a request up to ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            if wait:
                self._thread.join(timeout=self.timeout + 1.0)
            self._thread = None

    def __enter__(self) -> TerminationWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> TerminationNotice | None:
        """Block until a sticky notice is seen (or ``timeout`` seconds pass); return it."""
        self._seen.wait(timeout)
        return self._notice

    def record(self, notice: TerminationNotice) -> None:
        """Feed a notice seen elsewhere (e.g. SIGTERM) through the same sticky/on_notice path."""
        self._deliver(notice)

    def poll_once(self) -> list[TerminationNotice]:
        """One polling round; returns the notices the endpoints show right now."""
        with self._lock:
            found: list[TerminationNotice] = self._poll_checks()
            mode = self.mode or self._detect()
            if mode in ("aws", "local"):
                found += self._poll("aws", "local" if mode == "local" else "aws")
            if mode in ("gcp", "local"):
                found += self._poll("gcp", "local" if mode == "local" else "gcp")
            return found

    def _poll_checks(self) -> list[TerminationNotice]:
        found = []
        for check in self.checks:
            try:
                notice = check()
            except Exception as exc:  # a store that does not answer: try again next round
                self._error("notice check", exc)
                continue
            if notice is not None:
                found.append(notice)
                self._deliver(notice)
        return found

    # -- loop and bookkeeping -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set() and self._notice is None:
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # pragma: no cover - poll_once already guards each check
                self._error("poll", exc)
            self._stop.wait(max(0.0, self.poll_interval - (time.monotonic() - started)))

    def _deliver(self, notice: TerminationNotice) -> None:
        sticky = notice.kind in _STICKY
        key: tuple = ("sticky",) if sticky else (notice.kind, tuple(sorted(notice.detail.items())))
        with self._deliver_lock:  # record() may run on another thread than the poller
            if key in self._delivered:
                return
            self._delivered.add(key)
            if sticky:
                self._notice = notice
        if sticky:
            self._seen.set()
        if self.on_notice is not None:
            try:
                self.on_notice(notice)
            except Exception as exc:
                self._error("on_notice callback", exc)

    def _error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{what}: {exc}"
        now = self.clock()
        if self._last_log is not None and now - self._last_log < self.log_every_s:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} similar errors not logged)" if self._suppressed else ""
        log.warning("termination notice check failed: %s: %s%s", what, exc, more)
        self._last_log, self._suppressed = now, 0

    def _http(
        self, method: str, url: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes, Any]:
        data = b"" if method == "PUT" else None
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.read(MAX_BODY + 1), resp.headers
        except urllib.error.HTTPError as err:
            with err:
                try:
                    body = err.read(MAX_BODY + 1)
                except Exception:
                    body = b""
                return err.code, body, err.headers

    def _set_instance_id(self, status: int, body: bytes) -> None:
        """Best effort: a notice without an instance id is still a notice."""
        text = body.decode("ascii", "replace").strip()
        if status == 200 and _INSTANCE_ID.match(text):
            self.instance_id = text
        self._want_id = False

    # -- detection (auto) -------------------------------------------------------------------
    def _detect(self) -> str | None:
        if self.clock() < self._detect_at:
            return None
        try:
            self._aws_token(force=True)
            self.mode = "aws"
        except Exception:
            with contextlib.suppress(Exception):
                if self._gce_get(GCE_PREEMPTED)[0] == 200:
                    self.mode = "gcp"
        if self.mode is None:
            self._detect_at = self.clock() + 60.0
            if not self._warned_none:
                self._warned_none = True
                log.warning(
                    "no metadata endpoint answered (AWS %s, GCE %s); relying on SIGTERM only",
                    self.aws_endpoint,
                    self.gce_endpoint,
                )
        return self.mode

    # -- AWS IMDSv2 ---------------------------------------------------------------------------
    def _aws_token(self, *, force: bool = False) -> str:
        now = self.clock()
        if self._token and not force and now < self._token_expires:
            return self._token
        self._token = None
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": str(AWS_TOKEN_TTL_S)}
        url = self.aws_endpoint + AWS_TOKEN_PATH
        status, body, _ = self._http("PUT", url, headers, self.timeout)
        token = body.decode("ascii", "replace").strip() if status == 200 else ""
        if not token or len(token) > 4096 or not token.isprintable():
            raise NoticeError(f"IMDSv2 token request to {url} answered HTTP {status} (no token)")
        self._token = token
        self._token_expires = now + AWS_TOKEN_TTL_S - min(300.0, AWS_TOKEN_TTL_S / 10)
        return token

    def _aws_get(self, path: str) -> tuple[int, bytes]:
        url = self.aws_endpoint + path
        for attempt in (1, 2):
            headers = {"X-aws-ec2-metadata-token": self._aws_token(force=attempt == 2)}
            status, body, _ = self._http("GET", url, headers, self.timeout)
            if status != 401:
                return status, body
        return status, body

    # -- GCE metadata ---------------------------------------------------------------------------
    def _gce_get(self, path: str) -> tuple[int, bytes]:
        url, timeout = self.gce_endpoint + path, self.timeout
        wait = self.gce_wait_for_change and path == GCE_PREEMPTED  # polled last in a round
        if wait and self._gce_etag:
            seconds = max(1, int(self.poll_interval))
            url += f"?wait_for_change=true&last_etag={self._gce_etag}&timeout_sec={seconds}"
            timeout += seconds
        status, body, headers = self._http("GET", url, {"Metadata-Flavor": "Google"}, timeout)
        if wait:
            etag = headers.get("ETag") if headers is not None else None
            self._gce_etag = etag if etag and len(etag) < 128 and etag.isalnum() else None
        return status, body

    def _poll(self, protocol: str, source: str) -> list[TerminationNotice]:
        if protocol == "aws":
            get, id_path, checks = self._aws_get, AWS_INSTANCE_ID, _AWS_CHECKS
        else:
            get, id_path, checks = self._gce_get, GCE_INSTANCE_ID, _GCE_CHECKS
        found: list[TerminationNotice] = []
        if self._want_id:
            try:
                self._set_instance_id(*get(id_path))
            except Exception as exc:
                self._error(f"{protocol} metadata {id_path}", exc)
                return found  # endpoint unreachable: don't wait out more timeouts this round
        for path, parse in checks:
            try:
                status, body = get(path)
                notice = parse(
                    status, body, now=self.clock(), source=source, instance_id=self.instance_id
                )
            except Exception as exc:
                self._error(f"{protocol} metadata {path}", exc)
                continue
            if notice is not None:
                found.append(notice)
                self._deliver(notice)
        return found


_AWS_CHECKS = (
    (AWS_INSTANCE_ACTION, parse_aws_instance_action),
    (AWS_REBALANCE, parse_aws_rebalance),
)
_GCE_CHECKS = ((GCE_MAINTENANCE, parse_gce_maintenance), (GCE_PREEMPTED, parse_gce_preempted))
