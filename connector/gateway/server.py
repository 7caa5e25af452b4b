"""Serving the gateway's ASGI app inside the connector's own event loop.

Two HTTP servers: the built-in one (``connector.gateway.http``, the default: least CPU per
webhook) or uvicorn (``gateway.http_server: uvicorn``). uvicorn normally installs its own
signal handlers; here the app owns signals and the shutdown order, so either server is
started and stopped like any other component.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Literal

import uvicorn

from connector.gateway.app import GatewayApp
from connector.gateway.http import HttpServer

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the connector app handles SIGTERM/SIGINT


class _Uvicorn:
    """uvicorn on an already bound socket."""

    def __init__(self, app: GatewayApp) -> None:
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            http="httptools",
            # The event loop is the connector's (uvloop, installed by the CLI). No proxy-header
            # middleware (nothing here uses the client address) and no Server header: less
            # work per request on the webhook hot path.
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,  # as the built-in server's stop()
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="gateway")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


class GatewayServer:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one); ``stop`` drains requests."""

    def __init__(
        self,
        app: GatewayApp,
        host: str,
        port: int,
        http_server: Literal["builtin", "uvicorn"] = "builtin",
    ) -> None:
        self.app = app
        self.host = host
        # IPPROTO_TCP explicitly: with proto 0 asyncio skips TCP_NODELAY on accepted sockets.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = int(self._sock.getsockname()[1])
        self._server = HttpServer(app) if http_server == "builtin" else _Uvicorn(app)
        self._started = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self._server.start(self._sock)
        self._started = True
        log.info("gateway listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._server.stop()
        self._sock.close()  # bound in __init__: release it even if start() never ran
