"""The built-in HTTP/1.1 server (``connector.gateway.http``) over real loopback sockets.

Every behaviour is driven with raw bytes: keep-alive, pipelining, chunked and Content-Length
bodies, ``Expect: 100-continue``, HTTP/1.0, HEAD, hostile input (400/414/431 and closed),
bounded body buffering, the header and idle timeouts, disconnects, app failures, write
backpressure and the graceful stop; then a property-based fuzz of random and mutated bytes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.gateway.app import GatewayApp, GatewayConfig
from connector.gateway.http import BODY_HIGH_WATER, HttpServer
from connector.gateway.server import GatewayServer

LIMIT = 1000
BIG_PARTS = 256  # x 64 KiB: a 16 MiB response


class App:
    """An ASGI app whose paths exercise the server; it records what it saw."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.late_send_done = False
        self.parts_sent = 0
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("app bug before the response")
        if path == "/hold":
            await self.release.wait()
        elif path == "/slow":
            await asyncio.sleep(float(scope["query_string"] or 0.1))
        elif path == "/late-413":  # answers after a while, without reading the body
            await self.release.wait()
            await respond(send, 413, b"too large")
            return
        elif path == "/limit":
            await self.limited(scope, receive, send)
            return
        elif path == "/wait-disconnect":
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            await respond(send, 200, b"too late")  # dropped silently
            self.late_send_done = True
            return
        start = {"type": "http.response.start", "status": 200, "headers": []}
        if path == "/stream":  # no content-length: chunked (1.1) or until close (1.0)
            await send(start)
            await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
            await send({"type": "http.response.body", "body": b"world"})
            return
        if path == "/boom-late":
            await send(start)
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("app bug after the response started")
        if path == "/big":
            await send({**start, "headers": [(b"content-length", b"%d" % (BIG_PARTS << 16))]})
            for _ in range(BIG_PARTS):
                await send({"type": "http.response.body", "body": bytes(65536), "more_body": True})
                self.parts_sent += 1
            await send({"type": "http.response.body", "body": b""})
            return
        body = await read_all(receive)
        self.bodies.append(body)
        if path not in ("/echo", "/hold", "/slow"):
            await respond(send, 404, b"not found")
            return
        await respond(send, 200, path.encode() + b":" + body)

    async def limited(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """413 as the gateway does: by Content-Length before reading, or while reading."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > LIMIT:
            await respond(send, 413, b"too large")
            return
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if size > LIMIT:
                await respond(send, 413, b"too large")
                return
            if not message.get("more_body"):
                break
        await respond(send, 200, b"%d" % size)


async def read_all(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class Client:
    """A raw connection that parses the answers coming back."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answers: collections.deque[Answer] = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.answers.append(Answer(status, self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, timeout: float = 5) -> Answer:
        while not self.answers:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("closed before a complete answer")
            self.parser.feed_data(data)
        return self.answers.popleft()

    async def raw_until_close(self, timeout: float = 5) -> bytes:
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def closed(self, timeout: float = 5) -> bool:
        """True when the server closed the connection (nothing more came)."""
        return await self.raw_until_close(timeout) == b""

    def close(self) -> None:
        self.writer.close()


@dataclass
class Served:
    server: HttpServer
    app: App
    port: int
    clients: list[Client] = field(default_factory=list)

    async def client(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = Client(reader, writer)
        self.clients.append(client)
        return client


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    started: list[Served] = []

    async def start(**timeouts: float) -> Served:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        app = App()
        server = HttpServer(app, **timeouts)
        await server.start(sock)
        served = Served(server, app, sock.getsockname()[1])
        started.append(served)
        return served

    yield start
    for served in started:
        for client in served.clients:
            client.close()
        served.app.release.set()
        await served.server.stop(2)


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_keep_alive_serves_several_requests_on_one_connection(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    for i in range(3):
        client.send(post("/echo", b"n%d" % i))
        answer = await client.answer()
        assert (answer.status, answer.body) == (200, b"/echo:n%d" % i)
        assert b"connection" not in answer.headers
    assert len(served.server.connections) == 1


async def test_pipelined_requests_are_answered_in_order(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/slow?0.2") + post("/echo", b"second") + get("/missing") + get("/slow?0"))
    bodies = [(await client.answer()).body for _ in range(4)]
    assert bodies == [b"/slow:", b"/echo:second", b"not found", b"/slow:"]


async def test_chunked_request_body_reaches_the_app_whole(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    head = b"POST /echo?x=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    client.send(head + b"5\r\nhello\r\n")
    await asyncio.sleep(0.05)  # the rest in a later segment
    client.send(b"6;ext=1\r\n world\r\n0\r\n\r\n")
    answer = await client.answer()
    assert (answer.status, answer.body) == (200, b"/echo:hello world")


async def test_response_without_length_is_chunked_for_http11(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/stream"))
    answer = await client.answer()
    assert answer.headers[b"transfer-encoding"] == b"chunked"
    assert answer.body == b"hello world"


async def test_expect_100_continue_is_answered_when_the_app_reads(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    body = b'{"ok":true}'
    head = post("/echo", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 11")
    client.send(head)
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(body)
    assert (await client.answer()).body == b"/echo:" + body
    # An answer without reading: no 100, and the connection closes (the body never came).
    client.send(post("/limit", b"", "Expect: 100-continue").replace(b": 0", b": 5000"))
    answer = await client.answer()
    assert (answer.status, answer.headers[b"connection"]) == (413, b"close")
    assert await client.closed()


async def test_http10_closes_unless_keep_alive_is_asked(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/echo", version="1.0"))
    answer = await client.answer()
    assert (answer.status, answer.headers[b"connection"]) == (200, b"close")
    assert await client.closed()

    client = await served.client()
    client.send(get("/echo", "Connection: keep-alive", version="1.0"))
    assert (await client.answer()).headers[b"connection"] == b"keep-alive"
    client.send(get("/stream", "Connection: keep-alive", version="1.0"))
    raw = await client.raw_until_close()  # no length and no chunking in 1.0: ends by close
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in raw
    assert raw.endswith(b"\r\n\r\nhello world")


async def test_connection_close_is_honoured(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/echo", "Connection: close") + get("/echo"))
    answer = await client.answer()
    assert answer.headers[b"connection"] == b"close"
    assert await client.closed()  # the second request is never answered


async def test_head_gets_headers_and_no_body(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/echo").replace(b"GET", b"HEAD", 1) + get("/echo"))
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n"
    answer = await client.answer()  # the next answer follows right after the head
    assert (answer.status, answer.body) == (200, b"/echo:")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET " + b"/a" * 4500 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 40000, 431),  # a line that never ends
        (b"GET / HTTP/1.1\r\n" + b"X-H: 1\r\n" * 101 + b"\r\n", 431),
    ],
    ids=["garbage", "two-lengths", "te-and-length", "bad-name", "414", "431", "431-open", "431-n"],
)
async def test_hostile_input_is_answered_and_closed(serve: Any, data: bytes, status: int) -> None:
    served = await serve()
    client = await served.client()
    client.send(data)
    answer = await client.answer()
    assert (answer.status, answer.headers[b"connection"]) == (status, b"close")
    assert await client.closed()


async def test_bad_input_after_a_request_in_flight_is_answered_after_it(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/slow?0.1") + b"\x00garbage\r\n\r\n")
    assert (await client.answer()).status == 200
    assert (await client.answer()).status == 400
    assert await client.closed()


async def test_oversize_body_is_refused_without_reading_it_all(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    # Announced too large: 413 after 1 KiB of a 10 MiB body; the rest is never sent.
    client.send(post("/limit", b"").replace(b": 0", b": 10485760") + bytes(1024))
    answer = await client.answer()
    assert answer.status == 413
    # Chunked, no length: the app stops at its limit while the client is still sending.
    client = await served.client()
    client.send(b"POST /limit HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(b"400\r\n" + bytes(1024) + b"\r\n")
    assert (await client.answer()).status == 413


async def test_reading_pauses_while_the_app_leaves_the_body_unread(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    body = bytes(4 * 1024 * 1024)
    client.send(post("/hold", body))
    await asyncio.sleep(0.3)  # the client pushes as much as the sockets take
    (conn,) = served.server.connections
    assert conn.read_paused
    assert conn.parsing is not None
    buffered = conn.parsing.buffered
    assert BODY_HIGH_WATER < buffered <= BODY_HIGH_WATER + 512 * 1024
    served.app.release.set()
    answer = await client.answer()
    assert answer.body == b"/hold:" + body


async def test_a_body_left_unread_is_dropped_and_the_connection_goes_on(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(post("/late-413", bytes(1024 * 1024)) + get("/echo"))
    await asyncio.sleep(0.2)
    (conn,) = served.server.connections
    assert conn.read_paused
    served.app.release.set()
    assert (await client.answer()).status == 413
    answer = await client.answer()  # after the rest of the body, read and dropped
    assert (answer.status, answer.body) == (200, b"/echo:")


async def test_slow_header_section_times_out(serve: Any) -> None:
    served = await serve(header_timeout=0.3, idle_timeout=5)
    client = await served.client()
    started = time.monotonic()
    closed = asyncio.create_task(client.reader.read())
    client.send(b"GET / HTTP/1.1\r\n")
    while not closed.done() and time.monotonic() - started < 3:
        client.send(b"X")  # one header byte at a time, slowloris-style
        await asyncio.wait([closed], timeout=0.05)
    assert await closed == b""
    assert 0.25 < time.monotonic() - started < 1.5


async def test_idle_keep_alive_connection_times_out(serve: Any) -> None:
    served = await serve(header_timeout=5, idle_timeout=0.3)
    client = await served.client()
    client.send(get("/echo"))
    assert (await client.answer()).status == 200
    started = time.monotonic()
    assert await client.closed()
    assert 0.25 < time.monotonic() - started < 1.5


async def test_disconnect_mid_body_reaches_the_app_and_late_writes_are_dropped(
    serve: Any,
) -> None:
    served = await serve()
    client = await served.client()
    client.send(post("/wait-disconnect", b"").replace(b": 0", b": 100") + b"only ten..")
    await asyncio.sleep(0.05)
    client.close()
    await asyncio.wait_for(served.app.disconnected.wait(), 5)
    await asyncio.sleep(0.05)
    assert served.app.late_send_done
    assert not served.server.tasks


async def test_app_failure_is_a_500_before_the_response_else_a_close(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve()
    client = await served.client()
    with caplog.at_level(logging.ERROR, "connector.gateway.http"):
        client.send(get("/boom"))
        answer = await client.answer()
        assert (answer.status, answer.headers[b"connection"]) == (500, b"close")
        assert await client.closed()
        client = await served.client()
        client.send(get("/boom-late"))
        raw = await client.raw_until_close()
        assert raw == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\npart\r\n"
    assert [r.exc_info[1].args[0] for r in caplog.records if r.exc_info] == [
        "app bug before the response",
        "app bug after the response started",
    ]


async def test_writes_wait_while_the_client_does_not_read(serve: Any) -> None:
    served = await serve()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", served.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    client = Client(reader, writer)
    served.clients.append(client)
    client.send(get("/big"))
    await asyncio.sleep(0.3)
    assert 0 < served.app.parts_sent < BIG_PARTS  # paused: not all 16 MiB went out
    answer = await client.answer(timeout=20)
    assert len(answer.body) == BIG_PARTS << 16


async def test_graceful_stop_finishes_requests_in_flight(serve: Any) -> None:
    served = await serve()
    busy, idle = await served.client(), await served.client()
    busy.send(post("/hold", b"in flight"))
    idle.send(get("/echo"))
    assert (await idle.answer()).status == 200
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(served.server.stop(5))
    assert await idle.closed(1)  # idle connections close at once
    await asyncio.sleep(0.1)
    assert not stopping.done()
    served.app.release.set()
    answer = await busy.answer()
    assert (answer.body, answer.headers[b"connection"]) == (b"/hold:in flight", b"close")
    assert await busy.closed()
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)


async def test_graceful_stop_cuts_requests_at_its_deadline(serve: Any) -> None:
    served = await serve()
    client = await served.client()
    client.send(get("/hold"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await served.server.stop(0.3)
    assert time.monotonic() - started < 2
    assert await client.closed()
    assert not served.server.tasks


@pytest.mark.parametrize("http_server", ["builtin", "uvicorn"])
async def test_gateway_server_serves_with_either_http_server(http_server: Any) -> None:
    app = GatewayApp(GatewayConfig(), None)
    server = GatewayServer(app, "127.0.0.1", 0, http_server)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client = Client(reader, writer)
        client.send(get("/healthz") + get("/readyz"))
        assert (await client.answer()).body == b'{"status":"ok"}'
        assert (await client.answer()).body == b'{"ready":true}'
        client.close()
    finally:
        await server.stop()


# --- property-based: random and mutated bytes ----------------------------------------------

SEEDS = [
    get("/echo", "Accept: */*"),
    post("/echo", b'{"a":1}', "Content-Type: application/json"),
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    get("/stream", version="1.0") + get("/echo"),
    post("/limit", b"x" * 20, "Expect: 100-continue") + get("/echo", "Connection: close"),
    b"GET http://test/echo?q=1 HTTP/1.1\r\nHost: t\r\n\r\n",
]


@dataclass
class Threaded:
    """The server on its own loop in a thread, so that a sync fuzz can use plain sockets."""

    port: int
    failures: list[str]
    stop: Callable[[], None]


@pytest.fixture(scope="module")
def threaded() -> Iterator[Threaded]:
    ready = threading.Event()
    box: dict[str, Any] = {}
    failures: list[str] = []

    class Record(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            failures.append(record.getMessage())

    handler = Record(logging.ERROR)
    logging.getLogger("connector.gateway.http").addHandler(handler)

    def run() -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _, ctx: failures.append(str(ctx)))

        async def main() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.bind(("127.0.0.1", 0))
            server = HttpServer(App(), header_timeout=1, idle_timeout=1)
            await server.start(sock)
            box.update(port=sock.getsockname()[1], done=asyncio.Event(), loop=loop)
            ready.set()
            await box["done"].wait()
            await server.stop(1)

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["done"].set)
        thread.join(10)

    yield Threaded(box["port"], failures, stop)
    stop()
    logging.getLogger("connector.gateway.http").removeHandler(handler)


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed on bad input before taking it all
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class Statuses:
    """Parses a byte stream of responses; every status line seen, in order."""

    def __init__(self, data: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.seen: list[int] = []
        self.parser.feed_data(data)  # raises on anything that is not HTTP

    def on_headers_complete(self) -> None:
        self.seen.append(self.parser.get_status_code())


def check_answers(threaded: Threaded, data: bytes) -> None:
    answers = Statuses(exchange(threaded.port, data))
    assert all(100 <= status < 500 for status in answers.seen), answers.seen
    assert Statuses(exchange(threaded.port, get("/echo"))).seen == [200]
    assert not threaded.failures


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["flip", "insert", "delete", "repeat"])):
            case "flip" if at < len(data):
                data[at] = draw(st.integers(0, 255))
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            case "delete":
                del data[at : at + draw(st.integers(1, 16))]
            case _:
                data[at:at] = data[at : at + 64] * draw(st.integers(1, 300))
    return bytes(data)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_get_well_formed_answers(threaded: Threaded, data: bytes) -> None:
    check_answers(threaded, data)


@FUZZ
@given(data=mutated())
def test_mutated_requests_get_well_formed_answers(threaded: Threaded, data: bytes) -> None:
    check_answers(threaded, data)
