"""The HITL client honours HTTP(S)_PROXY / NO_PROXY: creates go through a real forward proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from connector.config import HitlSettings
from connector.hitl.client import HitlClient
from connector.sandbox import SandboxOptions, SandboxServer
from tests.support import create_body

LOOP = "65f0000000000000000000aa"


class ForwardProxy:
    """A minimal HTTP forward proxy on loopback: absolute-form requests and CONNECT tunnels.

    ``seen`` keeps each request line it was asked to forward, so a test can tell that a call
    went through it rather than straight to the origin.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("ascii").split(" ")
            self.seen.append(f"{method} {target}")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                # Absolute form -> origin form; keep-alive requests later on this connection
                # are relayed as bytes (the client reuses the same upstream for them).
                assert target.startswith("http://"), target
                authority, _, path = target[len("http://") :].partition("/")
                host, port = authority.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                up_writer.write(f"{method} /{path} {version}\r\n".encode() + rest)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    async with ForwardProxy() as running:
        yield running


@pytest.fixture
def sandbox() -> AsyncIterator[SandboxServer]:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,), seed=3)) as running:
        yield running  # type: ignore[misc]


def _settings(sandbox: SandboxServer) -> HitlSettings:
    return HitlSettings(base_url=f"{sandbox.url}/v1", api_key="key-proxy", max_retries=0)


async def _create(sandbox: SandboxServer, event_id: str) -> str:
    async with HitlClient(_settings(sandbox)) as client:
        created = await client.create_request(
            LOOP, create_body(request_text="through the proxy"), idempotency_key=event_id
        )
        fetched = await client.get_request(created.request_id)
    assert fetched.get("id", created.request_id) == created.request_id
    return created.request_id


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
async def test_create_goes_through_the_proxy_from_the_environment(
    proxy: ForwardProxy,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
    request_id = await _create(sandbox, "evt-proxied-1")
    assert request_id
    assert f"POST {sandbox.url}/v1/api/loops/{LOOP}/requests" in proxy.seen


async def test_no_proxy_origins_bypass_the_proxy(
    proxy: ForwardProxy, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert await _create(sandbox, "evt-direct-1")
    assert proxy.seen == []
