"""``SpotBackendHook``: an Airflow connection -> a spot-workflows backend.

The hook reads the connection (``spot-local``, ``aws`` or ``google_cloud_platform``; see
:mod:`spot_workflows.airflow.connections` for the extras) and builds the backend, the termination
notice source, the default checkpoint root and console links from it. ``spot_local_default`` and
``spot_local_demo`` work without being defined. Triggers use :meth:`SpotBackendHook.aget_info`,
which never blocks the triggerer's event loop.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from spot_workflows.airflow.connections import (
    BUILTIN_CONNECTIONS,
    DEFAULT_CONN_ID,
    LOCAL,
    ConnectionInfo,
    NoticeSource,
    build_backend,
    build_notice_source,
    checkpoint_root,
    console_url,
)
from spot_workflows.backends.base import Backend


def _info(conn: Any, extra: dict[str, Any]) -> ConnectionInfo:
    return ConnectionInfo(
        conn_id=conn.conn_id,
        conn_type=conn.conn_type or "",
        extra=dict(extra),
        login=conn.login,
        password=conn.password,
        host=conn.host,
    )


class SpotBackendHook(BaseHook):
    """Builds spot-workflows backends from Airflow connections.

    :param spot_conn_id: a ``spot-local`` (or former ``spot_local``), ``aws`` or
        ``google_cloud_platform`` connection.
    """

    conn_name_attr = "spot_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = LOCAL
    hook_name = "Spot workflows (local backend)"

    def __init__(self, spot_conn_id: str = DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spot_conn_id = spot_conn_id
        self._info: ConnectionInfo | None = None

    # -- connection --------------------------------------------------------------------------
    def get_info(self) -> ConnectionInfo:
        if self._info is None:
            try:
                conn = self.get_connection(self.spot_conn_id)
            except AirflowNotFoundException:
                if self.spot_conn_id not in BUILTIN_CONNECTIONS:
                    raise
                self._info = BUILTIN_CONNECTIONS[self.spot_conn_id]
            else:
                self._info = _info(conn, conn.extra_dejson)
        return self._info

    @classmethod
    async def aget_info(cls, spot_conn_id: str) -> ConnectionInfo:
        """The connection, fetched without blocking the event loop (for triggers)."""
        try:
            conn = await cls.aget_connection(spot_conn_id)
        except AirflowNotFoundException:
            if spot_conn_id not in BUILTIN_CONNECTIONS:
                raise
            return BUILTIN_CONNECTIONS[spot_conn_id]
        return _info(conn, await conn.aextra_dejson())

    # -- what the connection gives --------------------------------------------------------------
    def get_conn(self) -> Backend:
        return self.get_backend()

    def get_backend(self) -> Backend:
        return build_backend(self.get_info())

    def get_notice_source(self, *, since: float | None) -> NoticeSource:
        return build_notice_source(self.get_info(), since=since)

    def checkpoint_root(self) -> str:
        return checkpoint_root(self.get_info())

    def console_url(self, job_id: str | None) -> str | None:
        return console_url(self.get_info(), job_id)

    # -- connection form -------------------------------------------------------------------------
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["host", "schema", "login", "password", "port"],
            "relabeling": {},
            "placeholders": {
                "extra": '{"state_dir": "/tmp/spot-local", "reclaim_after_s": [30, 30]}'
            },
        }
