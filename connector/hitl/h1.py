"""A lean HTTP/1.1 keep-alive connection pool behind httpx's transport seam.

Why: the HITL client makes one small JSON call per event, and the per-call cost of general
clients (httpx's own pool: ~2.5 ms of CPU; aiohttp: ~250 µs) dominated the submit path. This
pool writes each request as one buffer on an ``asyncio.Protocol`` and parses the answer with
``httptools`` (llhttp, the parser uvicorn uses), so a call costs a few tens of µs.

Owns: one pool per origin (``scheme://host:port``) of at most ``max_connections``
connections, reused LIFO; TLS via ``ssl.SSLContext``; the timeouts of the request's
``timeout`` extension (connect, write, read, pool); limits on what a server may send
(header section, body size); mapping every failure onto ``httpx`` exceptions so callers see
the same errors as with the stock transport. Not here: retries, redirects, cookies,
proxies, compression (bodies are returned as sent; ``Response.aread`` decodes them).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast

import httptools
import httpx

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class RawResponse:
    """One parsed response (filled in by the parser's callbacks)."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def header_map(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ``, `` (RFC 9110 5.3)."""
        out: dict[str, str] = {}
        for raw_name, raw_value in self.headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out


Origin = tuple[bytes, bytes, int]  # (scheme, host, port)


class RawRequest:
    """A request already serialized: head and body in one buffer, for one origin."""

    __slots__ = ("data", "origin", "timeouts")

    def __init__(self, origin: Origin, data: bytes, timeouts: dict[str, float | None]) -> None:
        self.origin = origin
        self.data = data
        self.timeouts = timeouts


def origin_of(url: httpx.URL) -> Origin:
    scheme = url.raw_scheme
    if scheme not in (b"http", b"https"):
        raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
    return scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80)


def serialize(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | bytes, body: bytes
) -> bytes:
    """``METHOD target HTTP/1.1``, the header lines (or a prebuilt block), a blank line, body."""
    if not isinstance(headers, bytes):
        headers = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", headers, b"\r\n", body))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request on it at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._answer = RawResponse()
        self._parser = httptools.HttpResponseParser(self)
        self._head_bytes = 0
        self._body_bytes = 0
        self._head_done = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is unusable
            self._fail(httpx.RemoteProtocolError("unexpected data on an idle connection"))
            return
        if not self._head_done:
            # Only what precedes the body counts: one chunk may hold the head and a large body.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end
            if self._head_bytes > MAX_HEADER_BYTES:
                self._fail(httpx.RemoteProtocolError("response header section too large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_done and self._until_close():
            # A body without length or chunking ends with the connection (RFC 9112 6.3).
            self._waiter = None
            waiter.set_result(self._answer)
            return
        waiter.set_exception(
            httpx.ReadError(f"connection closed before the response ended ({exc})")
        )

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self._answer.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # --- httptools callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._answer.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._waiter is None:  # a second message nobody asked for
            self.keep_alive = False
        self._answer.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._answer.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            self._fail(httpx.RemoteProtocolError("response body too large"))
            return
        self._answer.body.append(body)

    def on_message_complete(self) -> None:
        waiter, answer = self._waiter, self._answer
        if waiter is None:  # the end of a message nobody asked for
            self.keep_alive = False
            return
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        # Anything the parser reports after this belongs to no request: it goes to a
        # throwaway answer, and data_received() sees no waiter and drops the connection.
        self._waiter, self._answer = None, RawResponse()
        if not waiter.done():
            waiter.set_result(answer)

    # --- used by the pool ------------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.keep_alive and not self._is_closing()

    def _is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def send(self, data: bytes) -> asyncio.Future[RawResponse]:
        """Write one whole request; the future gets the answer (or an httpx error)."""
        assert self.transport is not None
        self._answer = RawResponse()
        self._head_bytes = self._body_bytes = 0
        self._head_done = False
        self._waiter = waiter = self._loop.create_future()
        self.transport.write(data)
        return waiter

    def done(self) -> None:
        self._waiter = None

    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    """Connections to one origin: idle ones LIFO, and a FIFO of callers waiting for a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def put_back(self, conn: _Connection) -> None:
        self.idle.append(conn)
        self._wake_one()

    def release_slot(self) -> None:
        self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class H1Transport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` over pooled HTTP/1.1 keep-alive connections."""

    def __init__(self, max_connections: int = 64, ssl_context: ssl.SSLContext | None = None):
        self._limit = max(1, max_connections)
        self._ssl = ssl_context
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            body = request.content  # the HITL client always passes an in-memory body
        except httpx.RequestNotRead:
            body = await request.aread()
        url = request.url
        raw = RawRequest(
            origin_of(url),
            serialize(request.method.encode("ascii"), url.raw_path, request.headers.raw, body),
            request.extensions.get("timeout", {}),
        )
        try:
            answer = await self.send_raw(raw)
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(b"".join(answer.body)),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
            request=request,
        )

    async def send_raw(self, request: RawRequest) -> RawResponse:
        """Send one serialized request on a pooled connection and read the whole answer."""
        if self._closed:
            raise httpx.ConnectError("transport is closed")
        key = request.origin
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self._limit)
        conn = await self._checkout(pool, key, request.timeouts)
        try:
            answer = await self._exchange(conn, request)
        except BaseException:
            conn.abort()
            pool.release_slot()
            raise
        finally:
            conn.done()
        if conn.usable():
            pool.put_back(conn)
        else:
            conn.abort()
            pool.release_slot()
        return answer

    async def _checkout(
        self, pool: _Pool, key: Origin, timeouts: dict[str, float | None]
    ) -> _Connection:
        while pool.idle:
            conn = pool.idle.pop()
            if conn.usable():
                return conn
            conn.abort()
            pool.release_slot()
        if pool.open >= pool.limit:
            waiter = asyncio.get_running_loop().create_future()
            pool.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, timeouts.get("pool"))
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time") from None
            return await self._checkout(pool, key, timeouts)
        pool.open += 1
        try:
            return await self._connect(key, timeouts.get("connect"))
        except BaseException:
            pool.release_slot()
            raise

    async def _connect(self, key: Origin, limit: float | None) -> _Connection:
        scheme, raw_host, port = key
        host = raw_host.decode("ascii")
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == b"https":
            tls = self._ssl or ssl.create_default_context()
            self._ssl = tls
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                limit,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS with {host}:{port} failed: {exc}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {host}:{port} failed: {exc}") from None
        return conn

    async def _exchange(self, conn: _Connection, request: RawRequest) -> RawResponse:
        waiter = conn.send(request.data)
        timeout = request.timeouts.get("read")
        if timeout is None:
            return await waiter
        handle = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            handle.cancel()

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            for conn in pool.idle:
                conn.abort()
            pool.idle.clear()
            for waiter in pool.waiters:
                if not waiter.done():
                    waiter.cancel()
        self._pools.clear()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("no complete response in time"))
