"""The HITL client honours HTTP(S)_PROXY / NO_PROXY and SSL_CERT_FILE: creates go through a
real forward proxy, to a plain-HTTP sandbox and (CONNECT tunnel) to a TLS one whose throwaway
CA only ``SSL_CERT_FILE`` makes trusted."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from connector.config import HitlSettings
from connector.errors import HitlUnavailableError
from connector.hitl.client import HitlClient
from hitl_sandbox import SandboxOptions, SandboxServer
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
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,), seed=3)) as running:
        yield running


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_sandbox(ca: trustme.CA, tmp_path: Path) -> Iterator[SandboxServer]:
    """The sandbox serving TLS with a certificate for 127.0.0.1 issued by the test CA."""
    chain = tmp_path / "sandbox-key-and-chain.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(chain))
    options = SandboxOptions(preset_loops=(LOOP,), seed=4)
    with SandboxServer(options, ssl_certfile=str(chain)) as running:
        yield running


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


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
    _clear_env(monkeypatch)
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
    request_id = await _create(sandbox, "evt-proxied-1")
    assert request_id
    assert f"POST {sandbox.url}/v1/api/loops/{LOOP}/requests" in proxy.seen


async def test_no_proxy_origins_bypass_the_proxy(
    proxy: ForwardProxy, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert await _create(sandbox, "evt-direct-1")
    assert proxy.seen == []


async def test_https_create_tunnels_through_https_proxy_and_trusts_ssl_cert_file(
    proxy: ForwardProxy,
    tls_sandbox: SandboxServer,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert tls_sandbox.url.startswith("https://127.0.0.1:")

    request_id = await asyncio.wait_for(_create(tls_sandbox, "evt-tls-proxied-1"), 20)

    # The proxy carried the calls as a CONNECT tunnel (it never saw a request line in clear),
    # and the sandbox, asked directly, holds the request.
    authority = f"127.0.0.1:{tls_sandbox.port}"
    assert proxy.seen and set(proxy.seen) == {f"CONNECT {authority}"}
    direct = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(verify=direct, trust_env=False) as admin:
        answer = await admin.get(f"{tls_sandbox.url}/sandbox/requests/{request_id}")
    assert answer.status_code == 200
    stored = answer.json()["request"]
    assert stored["id"] == request_id
    assert stored["loop_id"] == LOOP


async def test_https_create_without_the_ca_fails_on_the_certificate(
    proxy: ForwardProxy,
    tls_sandbox: SandboxServer,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")

    with pytest.raises(HitlUnavailableError) as failed:
        await asyncio.wait_for(_create(tls_sandbox, "evt-tls-untrusted-1"), 20)

    assert failed.value.status is None  # no answer at all, not an HTTP error
    assert "TLS certificate not trusted (unable to get local issuer certificate)" in str(
        failed.value
    )
    assert proxy.seen == [f"CONNECT 127.0.0.1:{tls_sandbox.port}"]
    direct = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(verify=direct, trust_env=False) as admin:
        answer = await admin.get(f"{tls_sandbox.url}/sandbox/requests")
    assert answer.status_code == 200
    assert answer.json()["requests"] == []
