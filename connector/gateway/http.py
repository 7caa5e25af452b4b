"""A lean HTTP/1.1 server for the gateway's ASGI app, on ``asyncio.Protocol`` + ``httptools``.

Why: uvicorn's per-request machinery dominated the gateway's CPU per webhook. This server
parses with ``httptools`` (llhttp, the parser uvicorn uses), runs one task per request and
writes a response head together with its first body part, so a webhook costs fewer µs.

Owns: the ASGI ``http`` scope with its ``receive``/``send``; keep-alive (HTTP/1.1 default,
1.0 on request); pipelining (requests parsed ahead, answered strictly in order); bodies by
Content-Length or chunked, streamed to the app with reading paused while too much is
buffered; ``Expect: 100-continue``; responses with Content-Length, chunked (1.1) or ended by
close (1.0); HEAD; limits on untrusted input (malformed → 400, long request target → 414,
large header section → 431, each answered and closed); header and idle timeouts; write
backpressure; a graceful stop. Not here: lifespan, upgrades (WebSocket), TLS, HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
App = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]

MAX_TARGET_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024  # request line and header fields together
MAX_HEADERS = 100
BODY_HIGH_WATER = 64 * 1024  # request body buffered for the app before reading pauses

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


def _error_response(status: int) -> bytes:
    body = b'{"error":"%s"}' % HTTPStatus(status).phrase.lower().encode()
    head = b"connection: close\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return _status_line(status) + head % len(body) + body


class _Reject(Exception):
    """Input refused while parsing: answered with ``status``, then the connection closes."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Request:
    """One request: its scope, body not yet received by the app, and its response's framing."""

    __slots__ = (
        "body",
        "body_allowed",
        "buffered",
        "chunked",
        "complete",
        "conn",
        "delivered",
        "expect_100",
        "finished",
        "gone",
        "head",
        "keep_alive",
        "remaining",
        "scope",
        "started",
        "waiter",
    )

    def __init__(
        self, conn: _Connection, scope: dict[str, Any], keep_alive: bool, expect_100: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100  # and "100 Continue" not sent yet
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False  # the whole request, body included, was parsed
        self.delivered = False  # ... and handed to the app
        self.gone = False  # the connection closed: receive() says disconnect, sends are dropped
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        self.finished = False
        self.head = b""  # the response head, written with the first body part
        self.body_allowed = True
        self.chunked = False
        self.remaining: int | None = None  # bytes still owed under the app's content-length

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def serve(self) -> None:
        conn = self.conn
        try:
            await conn.app(self.scope, self.receive, self.send)
        except Exception:
            log.exception(
                "gateway app failed on %s %.200s", self.scope["method"], self.scope["path"]
            )
            conn.app_failed(self)
        else:
            if not self.finished and not self.gone:
                log.error("gateway app returned without completing its response")
                conn.app_failed(self)

    async def receive(self) -> Message:
        conn = self.conn
        if self.expect_100 and not (self.started or self.complete or self.gone):
            self.expect_100 = False
            conn.write(_CONTINUE)
        while True:
            if self.gone:
                return {"type": "http.disconnect"}
            if not self.delivered and (self.body or self.complete):
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body.clear()
                self.buffered = 0
                self.delivered = self.complete
                if conn.read_paused:
                    conn.update_reading()
                return {"type": "http.request", "body": body, "more_body": not self.complete}
            if self.finished:
                return {"type": "http.disconnect"}
            self.waiter = conn.loop.create_future()
            await self.waiter
            self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.head = self._head(message["status"], message.get("headers", ()))
            return
        if kind != "http.response.body" or not self.started or self.finished:
            raise RuntimeError(f"unexpected ASGI message {kind!r} at this point")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.gone:
            return
        if not self.body_allowed:
            body = b""
        elif self.remaining is not None:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("response body longer than its content-length")
        elif self.chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                body += b"0\r\n\r\n"
        conn = self.conn
        if self.head:
            body, self.head = self.head + body, b""
        if body:
            conn.write(body)
        if not more:
            self.finished = True
            if self.remaining:  # shorter than announced: the framing is lost
                self.keep_alive = False
            conn.response_done(self)
        if conn.write_paused:
            await conn.drain()

    def _head(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        conn = self.conn
        parts = [_status_line(status)]
        length: bytes | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue  # written below, from what the server decides
            if lower == b"content-length":
                length = value
            parts += (name, b": ", value, b"\r\n")
        if status < 200 or status in (204, 304) or self.scope["method"] == "HEAD":
            self.body_allowed = False
        elif length is not None:
            self.remaining = int(length)
        elif self.scope["http_version"] == "1.1":
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            self.keep_alive = False  # an HTTP/1.0 body without length ends with the connection
        if self.expect_100 and not self.complete:
            self.keep_alive = False  # the client may still send the body we never asked for
        if conn.server.stopping:
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.app = server.app
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.current: _Request | None = None  # being answered
        self.parsing: _Request | None = None  # head parsed, body still arriving
        self.queue: collections.deque[_Request] = collections.deque()  # parsed ahead
        self.closed = False
        self.halted = False  # reading stopped for good: bad input or an upgrade
        self.final: int | None = None  # the error answer due after the requests before it
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        # The head being parsed.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.expect_100 = False
        self.in_head = True  # not inside a body: received bytes count against the head limit
        self.head_received = 0
        self.began = False  # a request line started, its head not complete yet
        self.timing_head = False
        # One timer for the idle and header timeouts; moving the deadline later is free.
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.server.connections.add(self)
        if self.server.stopping:
            self.close()
            return
        self.set_deadline(self.server.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.halted or self.closed:
            return
        if self.in_head:
            self.head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.halt(None)  # answer the request as plain HTTP, then close
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is not None and not isinstance(cause, _Reject):
                log.error("gateway HTTP parser callback failed", exc_info=cause)
            self.halt(cause.status if isinstance(cause, _Reject) else 400)
            return
        if self.in_head and self.head_received > MAX_HEADER_BYTES:
            self.halt(431)  # a header line that never ends (the parser buffers it)
        elif self.began and not self.timing_head:
            self.timing_head = True
            self.set_deadline(self.server.header_timeout)

    def eof_received(self) -> bool:
        """The client sent all it will: answer the complete requests, then close."""
        if not self.halted:
            self.halt(None)
        return True  # keep the transport open for the answers

    def connection_lost(self, exc: Exception | None) -> None:
        self.mark_closed()
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.expect_100 = False
        self.began = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_TARGET_BYTES:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size + len(self.url) > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise _Reject(431)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100 = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = self.began = self.timing_head = False
        self.head_received = 0
        self.deadline = None
        parser = self.parser
        version = parser.get_http_version()
        request = _Request(
            self,
            self.scope(version),
            parser.should_keep_alive(),
            self.expect_100 and version == "1.1",
        )
        self.parsing = request
        if self.current is None:
            self.run(request)
        else:
            self.queue.append(request)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        assert request is not None
        if request.finished or request.gone:
            return  # answered already: the rest of the body is dropped
        request.body.append(body)
        request.buffered += len(body)
        if request.buffered > BODY_HIGH_WATER and not self.read_paused:
            self.update_reading()
        request.wake()

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        self.parsing = None
        self.in_head = True
        request.complete = True
        request.wake()

    # --- requests and responses ------------------------------------------------------------

    def scope(self, version: str) -> dict[str, Any]:
        target = self.url
        if target.startswith(b"/"):
            raw_path, _, query = target.partition(b"?")
        else:  # absolute-form (or garbage)
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400) from None
            raw_path, query = url.path or b"/", url.query or b""
        path = raw_path.decode("latin-1")
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "method": self.parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": self.headers,
            "client": self.client,
            "server": self.local,
        }

    def run(self, request: _Request) -> None:
        self.current = request
        task = self.loop.create_task(request.serve())
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    def response_done(self, request: _Request) -> None:
        """``request`` is answered: close, or go on with the next request, or wait idle."""
        if self.closed:
            return
        if not request.keep_alive or self.server.stopping:
            self.close()
            return
        self.current = None
        request.body.clear()  # what is left of its body is dropped from now on
        request.buffered = 0
        if self.queue:
            self.run(self.queue.popleft())
        elif self.halted:
            self.answer_final()
            return
        elif not self.began:
            self.set_deadline(self.server.idle_timeout)
        self.update_reading()

    def app_failed(self, request: _Request) -> None:
        if request.gone or request.finished:  # the connection has moved on
            return
        if not request.started or request.head:  # nothing written yet
            self.write(_error_response(500))
        self.close()  # else part of the response is out: only closing ends it

    def halt(self, status: int | None) -> None:
        """Stop reading for good; answer ``status`` (None: nothing) after the requests before."""
        self.halted = True
        self.final = status
        self.update_reading()
        parsing = self.parsing
        if parsing is not None and parsing is not self.current:
            self.queue.pop()  # its body will never end: it is never run
        current = self.current
        if current is None:
            if not self.queue:
                self.answer_final()
        elif not current.complete:  # the app would wait forever for the rest of its body
            if current.started:
                self.close()
            else:
                self.answer_final()

    def answer_final(self) -> None:
        if self.final is not None:
            self.write(_error_response(self.final))
        self.close()

    def update_reading(self) -> None:
        parsing = self.parsing
        pause = (
            self.halted
            or bool(self.queue)
            or (parsing is not None and parsing.buffered > BODY_HIGH_WATER)
        )
        if pause != self.read_paused and not self.closed:
            assert self.transport is not None
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            waiter = self.drain_waiter
            if waiter is None or waiter.done():
                waiter = self.drain_waiter = self.loop.create_future()
            await waiter

    def mark_closed(self) -> None:
        self.closed = True
        self.deadline = None
        for request in (self.current, self.parsing, *self.queue):
            if request is not None:
                request.gone = True
                request.wake()

    def close(self) -> None:
        if not self.closed:
            self.mark_closed()
            assert self.transport is not None
            self.transport.close()

    def abort(self) -> None:
        self.mark_closed()
        if self.transport is not None:
            self.transport.abort()

    # --- timeouts --------------------------------------------------------------------------

    def set_deadline(self, seconds: float) -> None:
        self.deadline = when = self.loop.time() + seconds
        if self.timer is not None:
            if self.timer_at <= when:
                return  # fires early, finds the deadline moved, and sleeps again
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.closed:
            return
        if self.loop.time() >= deadline:
            self.close()  # idle too long, or a header section too slow
            return
        self.timer_at = deadline
        self.timer = self.loop.call_at(deadline, self.on_timer)


class HttpServer:
    """Serves an ASGI app's ``http`` scope on a listening socket."""

    def __init__(
        self, app: App, *, header_timeout: float = 10.0, idle_timeout: float = 15.0
    ) -> None:
        """``header_timeout``: for a whole header section; ``idle_timeout``: between requests."""
        self.app = app
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, loop), sock=sock, backlog=2048
        )

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop accepting, close idle connections, give requests in flight ``drain_seconds``
        to finish, then close every connection and cancel what is left."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.current is None:
                conn.close()  # the others close once their response is written
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while (self.connections or self.tasks) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # a stop is rare: polling beats wiring an event
        for conn in list(self.connections):
            conn.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
