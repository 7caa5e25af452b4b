"""The gateway's HTTP server (uvicorn + its head limits + the app's body deadline) over raw
loopback sockets, with its real Kafka sink: hostile bytes, slow heads and bodies, idle
connections, the concurrency limit, and a fuzz of random and mutated bytes (never a 5xx).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httptools
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.config import GatewaySettings
from connector.hitl.signing import sign
from tests.integration.harness import run_settings
from tests.integration.test_gateway import SECRETS, Running, start_gateway

pytestmark = pytest.mark.kafka

LIMITS = GatewaySettings(
    host="127.0.0.1",
    port=0,
    limit_concurrency=100,
    keep_alive_seconds=0.5,
    header_timeout_seconds=0.5,
    max_header_bytes=8192,
    body_timeout_seconds=0.5,
)


@pytest.fixture(scope="module")
def gateway(kafka_bootstrap: str) -> Iterator[Running]:
    settings = run_settings(kafka_bootstrap, "http://127.0.0.1:9")
    running = start_gateway(settings, "required", LIMITS)
    yield running
    running.stop()


def _port(running: Running) -> int:
    return int(running.url.rsplit(":", 1)[1])


def webhook(
    request_id: str = "req-srv", length: int | None = None, body: bytes | None = None
) -> bytes:
    payload = (
        body
        if body is not None
        else orjson.dumps(
            {
                "event": "request.completed",
                "data": {"request": {"id": request_id, "status": "completed"}},
            }
        )
    )
    head = [
        "POST /webhooks/hitl HTTP/1.1",
        "Host: t",
        "Content-Type: application/json",
        f"Content-Length: {len(payload) if length is None else length}",
        f"X-HITL-Signature: {sign(payload, SECRETS[0])}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Statuses:
    """Parses a byte stream of responses; every status line seen, in order."""

    def __init__(self, data: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.seen: list[int] = []
        self.parser.feed_data(data)  # raises on anything that is not HTTP

    def on_headers_complete(self) -> None:
        self.seen.append(self.parser.get_status_code())


def exchange(port: int, data: bytes, half_close: bool = True, timeout: float = 5) -> bytes:
    """Send ``data`` (then half-close) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
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


def test_a_webhook_over_a_raw_socket_is_accepted(gateway: Running) -> None:
    assert Statuses(exchange(_port(gateway), webhook())).seen == [200]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 40_000, 431),  # a line that never ends
        (b"GET /healthz HTTP/1.1\r\n" + b"X-H: 1\r\n" * 2000, 431),
    ],
    ids=["garbage", "two-lengths", "te-and-length", "bad-name", "431", "431-open", "431-n"],
)
def test_hostile_input_is_answered_and_closed(gateway: Running, data: bytes, status: int) -> None:
    assert Statuses(exchange(_port(gateway), data, half_close=False)).seen == [status]


def test_slow_head_is_cut_at_the_header_deadline(gateway: Running) -> None:
    with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        sock.settimeout(0.05)
        closed = False
        while not closed and time.monotonic() - started < 3:
            try:
                sock.sendall(b"X")  # one header byte at a time, slowloris-style
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed
        assert 0.4 < time.monotonic() - started < 1.5


async def test_many_idle_connections_are_closed_and_the_limit_holds(gateway: Running) -> None:
    port = _port(gateway)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(150)]
    await asyncio.sleep(0.1)
    connections, _ = gateway.server.load
    assert connections >= 100
    # Over limit_concurrency: uvicorn answers 503 rather than taking on more work.
    assert Statuses(await asyncio.to_thread(exchange, port, webhook())).seen == [503]
    started = time.monotonic()
    reads = [reader.read() for reader, _ in idle]
    assert await asyncio.wait_for(asyncio.gather(*reads), 3) == [b""] * 150
    assert time.monotonic() - started < 1.5  # closed at the header deadline (0.5 s)
    for _, writer in idle:
        writer.close()
    assert Statuses(await asyncio.to_thread(exchange, port, webhook())).seen == [200]


async def test_slow_bodies_get_408_and_free_their_tasks(gateway: Running) -> None:
    """50 clients send a head, a ``Content-Length`` under the body limit and one byte."""
    port = _port(gateway)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
    started = time.monotonic()
    for _, writer in conns:
        writer.write(webhook(length=60_000, body=b"{"))
    await asyncio.sleep(0.2)
    assert gateway.server.load[1] == 50  # every one holds a task while its body trickles
    answers = await asyncio.wait_for(asyncio.gather(*(r.read() for r, _ in conns)), 5)
    assert [Statuses(a).seen for a in answers] == [[408]] * 50
    assert time.monotonic() - started < 2.0
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(0.1)
    assert gateway.server.load == (0, 0)
    assert Statuses(await asyncio.to_thread(exchange, port, webhook())).seen == [200]


def test_metrics_with_bytes_that_are_not_utf8_is_answered_200(gateway: Running) -> None:
    # prometheus_client's ASGI app decodes headers and the query string as UTF-8; the fuzz
    # found a 500 for an Accept-Encoding byte 0x80. The gateway hands it only what it reads.
    for data in (
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding:\x80gzip\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Other: \xf9\xfa\r\n\r\n",
        b"GET /metrics?name[]=%F9%80 HTTP/1.1\r\nHost: t\r\n\r\n",
    ):
        assert Statuses(exchange(_port(gateway), data)).seen == [200], data


def test_idle_keep_alive_connection_is_closed(gateway: Running) -> None:
    with socket.create_connection(("127.0.0.1", _port(gateway)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # head and body may come apart
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.4 < time.monotonic() - started < 1.5


SEEDS = [
    webhook(),
    b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
    b"POST /webhooks/hitl HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
]


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


def check_answers(gateway: Running, data: bytes) -> None:
    answers = Statuses(exchange(_port(gateway), data))
    assert all(100 <= status < 500 for status in answers.seen), answers.seen
    assert Statuses(exchange(_port(gateway), SEEDS[1])).seen == [200]


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_get_well_formed_answers(gateway: Running, data: bytes) -> None:
    check_answers(gateway, data)


@FUZZ
@given(data=mutated())
def test_mutated_requests_get_well_formed_answers(gateway: Running, data: bytes) -> None:
    check_answers(gateway, data)
