"""``H1Transport`` against real loopback servers that misbehave in scripted ways.

Each test starts an asyncio TCP server whose handler answers every request with the bytes a
script gives, so framing (length, chunked, until close), keep-alive, limits, timeouts, resets
and TLS are exercised over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from connector.config import HitlSettings
from connector.hitl.client import HitlClient
from connector.hitl.h1 import MAX_BODY_BYTES, H1Transport

Reply = Callable[[int, bytes], bytes | None]  # (request number, request head) → bytes to send

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


class Server:
    """Counts connections and requests; ``reply`` decides each answer (``None``: say nothing)."""

    def __init__(self, reply: Reply, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.open_now = 0
        self.max_open = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                answer = self.reply(self.requests, head)
                if answer is None:
                    await asyncio.sleep(3600)
                    return
                if answer == b"RESET":
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def serve(
    reply: Reply, *, close_after: bool = False, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    server = Server(reply, close_after)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(listener.wait_closed(), 2)


def always(answer: bytes) -> Reply:
    return lambda _n, _head: answer


async def get(transport: H1Transport, url: str, read: float = 5.0) -> httpx.Response:
    request = httpx.Request(
        "GET", url, extensions={"timeout": {"connect": 5, "read": read, "write": 5, "pool": 5}}
    )
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


async def test_keep_alive_reuses_one_connection() -> None:
    async with serve(always(OK)) as server:
        transport = H1Transport(4)
        for _ in range(20):
            assert (await get(transport, server.url + "/x")).json() == {}
        await transport.aclose()
    assert server.requests == 20 and server.connections == 1


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            b"hello",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    ],
)
async def test_framing(answer: bytes, body: bytes) -> None:
    async with serve(always(answer)) as server:
        transport = H1Transport(2)
        for _ in range(3):  # the connection stays usable after each framing
            assert (await get(transport, server.url)).content == body
        await transport.aclose()
    assert server.connections == 1


async def test_body_until_close_and_connection_close_header() -> None:
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    async with serve(always(answer), close_after=True) as server:
        transport = H1Transport(2)
        for _ in range(3):
            assert (await get(transport, server.url)).content == b"until the end"
        await transport.aclose()
    assert server.connections == 3  # never reused after "Connection: close"


async def test_server_closing_idle_connections_is_survived() -> None:
    async with serve(always(OK), close_after=True) as server:  # closes after each answer
        transport = H1Transport(2)
        for _ in range(5):
            await asyncio.sleep(0.05)  # let the close arrive: the idle connection is dropped
            assert (await get(transport, server.url)).status_code == 200
        await transport.aclose()
    assert server.requests == 5


async def test_read_timeout_then_the_pool_recovers() -> None:
    replies = iter([None, OK])
    async with serve(lambda _n, _h: next(replies)) as server:
        transport = H1Transport(1)
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, server.url, read=0.3)
        assert (await get(transport, server.url)).status_code == 200  # slot was released
        await transport.aclose()


async def test_refused_is_a_connect_error() -> None:
    async with serve(always(OK)) as server:
        url = server.url
    transport = H1Transport(1)
    with pytest.raises(httpx.ConnectError):
        await get(transport, url)
    await transport.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: "
        + str(MAX_BODY_BYTES + 1).encode()
        + b"\r\n\r\n"
        + b"x" * (MAX_BODY_BYTES + 1),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["garbage", "huge-header", "huge-body", "bad-chunk"],
)
async def test_hostile_answers_are_protocol_errors(answer: bytes) -> None:
    async with serve(always(answer)) as server:
        transport = H1Transport(1)
        with pytest.raises(httpx.RemoteProtocolError):
            await get(transport, server.url)
        await transport.aclose()


async def test_reset_mid_answer_is_a_read_error() -> None:
    async with serve(always(b"RESET")) as server:
        transport = H1Transport(1)
        with pytest.raises(httpx.ReadError):
            await get(transport, server.url)
        await transport.aclose()


async def test_pool_limit_bounds_connections_and_everyone_is_served() -> None:
    async with serve(always(OK)) as server:
        transport = H1Transport(3)
        responses = await asyncio.gather(*(get(transport, server.url) for _ in range(40)))
        await transport.aclose()
    assert [r.status_code for r in responses] == [200] * 40
    assert server.max_open <= 3


async def test_cancelled_request_frees_its_slot() -> None:
    replies = iter([None, OK])
    async with serve(lambda _n, _h: next(replies)) as server:
        transport = H1Transport(1)
        stuck = asyncio.create_task(get(transport, server.url, read=60))
        await asyncio.sleep(0.2)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert (await get(transport, server.url)).status_code == 200
        await transport.aclose()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_verified_against_its_ca_and_refused_otherwise(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with serve(always(OK), tls=server_tls) as server:
        trusted = H1Transport(2, ssl.create_default_context(cafile=str(cert)))
        assert (await get(trusted, server.url)).status_code == 200
        await trusted.aclose()
        untrusted = H1Transport(2)  # system CAs only
        with pytest.raises(httpx.ConnectError, match="TLS"):
            await get(untrusted, server.url)
        await untrusted.aclose()


async def test_hitl_client_sends_idempotency_key_and_reads_rate_limit_headers() -> None:
    heads: list[bytes] = []
    created = b'{"error":false,"data":{"request_id":"r-1","status":"pending"}}'

    def reply(_n: int, head: bytes) -> bytes:
        heads.append(head)
        return (
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-RateLimit-Limit: 100"
            b"\r\nX-RateLimit-Remaining: 41\r\nContent-Length: "
            + str(len(created)).encode()
            + b"\r\n\r\n"
            + created
        )

    async with serve(reply) as server:
        settings = HitlSettings(base_url=server.url + "/v1", api_key="k-secret", transport="h1")
        async with HitlClient(settings) as client:
            result = await client.create_request("loop 1", {"a": 1}, idempotency_key="ev-1")
            assert result.request_id == "r-1"
            assert client.pacer.remaining == 41  # learned from the headers
    (head,) = heads
    assert head.startswith(b"POST /v1/api/loops/loop%201/requests HTTP/1.1\r\n")
    assert b"\r\nIdempotency-Key: ev-1\r\n" in head
    assert b"\r\nAuthorization: Bearer k-secret\r\n" in head
    assert b"\r\nContent-Length: 7\r\n" in head
