"""Serving an ASGI app with uvicorn (httptools): the gateway inside the connector's event loop,
the sandbox in a thread of its own or in the foreground.

``HttpServer`` binds its socket at construction (port 0 picks a free one; ``port`` is then
known before it serves). In the connector (``start``/``stop``) the app owns signals and the
shutdown order, so uvicorn installs no handlers; ``run`` (the sandbox) serves on its own loop,
with uvicorn's handlers when it runs in the main thread. uvicorn's httptools protocol has no
bound on a request's head, so ``_Protocol`` adds one: the head must arrive within
``head_timeout`` (a new connection that sends nothing counts, which also closes idle
connections) and within ``max_head_bytes`` (else 431). A body's deadline is the app's
(``GatewayApp``): it holds the task that reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

_TOO_LARGE_BODY = b"request head is too large"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap on each request head."""

    head_timeout: float = 10.0
    max_head_bytes: int = 16_384

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = self._chunk = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._chunk = len(data)
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # A head still not complete after this read (a whole head in one read, the usual
            # case, costs no timer): it must complete in time, and within the size cap, so a
            # header line that never ends cannot grow without limit. (A read that ends one
            # message and starts the next head is not counted: at most one read over.)
            self._arm_head_timer()
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def eof_received(self) -> bool:  # type: ignore[override]
        # The client sent all it will (a half-close): finish the answer in progress, then
        # close. uvicorn's own protocol closes at once and the answer is lost.
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return True
        return False

    def on_headers_complete(self) -> None:
        at_most = self._head_bytes + self._chunk  # the head is within what was read so far
        self._in_head, self._head_bytes = False, 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        limit = self.max_head_bytes
        if at_most > limit and (
            len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > limit
        ):  # a large head that came in one read
            self.transport.write(_TOO_LARGE)
            self.transport.close()
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, -self._chunk

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 picks a free port), for uvicorn to serve on.

    ``IPPROTO_TCP`` explicitly: with proto 0 asyncio skips TCP_NODELAY on accepted sockets,
    and every response then stalls ~40 ms on delayed ACKs.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, without its signal handlers when the caller owns signals."""

    handle_signals = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self.handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


class HttpServer:
    """Serves ``app`` on ``host:port`` with the given limits; ``stop`` drains requests.

    With ``ssl_certfile`` (PEM chain; ``ssl_keyfile`` unless the key is in it) it serves TLS.
    """

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        name: str = "http",
        log_level: str = "warning",
        limit_concurrency: int | None = None,
        keep_alive_seconds: float = 5.0,
        head_timeout: float = 10.0,
        max_head_bytes: int = 16_384,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.host, self.name = host, name
        self.scheme = "https" if ssl_certfile else "http"
        self._sock = bind_socket(host, port)
        self.port = int(self._sock.getsockname()[1])
        limits = {"head_timeout": head_timeout, "max_head_bytes": max_head_bytes}
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            http=type(f"{name.title()}HttpProtocol", (_Protocol,), limits),
            ws="none",
            # The event loop is the caller's (uvloop, installed by the CLI). No proxy-header
            # middleware (nothing here uses the client address) and no Server header.
            proxy_headers=False,
            server_header=False,
            limit_concurrency=limit_concurrency,
            timeout_keep_alive=keep_alive_seconds,  # type: ignore[arg-type]
            timeout_graceful_shutdown=10,
            ssl_certfile=ssl_certfile,  # TLS with this certificate chain (PEM), else plain HTTP
            ssl_keyfile=ssl_keyfile,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return bool(self._server.started)

    @property
    def load(self) -> tuple[int, int]:
        """Open connections and requests in progress, as uvicorn counts them for its limit."""
        state = self._server.server_state
        return len(state.connections), len(state.tasks)

    async def start(self) -> None:
        """Serve on the running loop until ``stop``."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name=self.name)
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        log.info("%s listening on %s:%d", self.name, self.host, self.port)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sock.close()  # bound in __init__: release it even if start() never ran

    def run(self, *, handle_signals: bool = False) -> None:
        """Serve on a new event loop until ``exit_soon`` (or, with ``handle_signals``, Ctrl-C)."""
        self._server.handle_signals = handle_signals
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()

    def exit_soon(self) -> None:
        """Ask ``run`` to finish its requests and return (from any thread)."""
        self._server.should_exit = True
