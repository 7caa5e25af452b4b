"""The test fault proxy against a real echo server on loopback: every mode, switched live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.faultproxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as p:
        yield p


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_pass_forwards_both_ways_and_counts(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    payload = bytes(range(256)) * 1000  # bigger than one chunk
    assert await _roundtrip(reader, writer, payload) == payload
    writer.close()
    assert proxy.stats.accepted == 1 and proxy.stats.peak_active == 1
    assert proxy.stats.bytes_up == len(payload)
    assert proxy.stats.bytes_down == len(payload)


async def test_latency_delays_each_direction_and_keeps_order(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"warm") == b"warm"
    await proxy.latency(150)
    started = time.monotonic()
    parts = [f"part-{i};".encode() for i in range(20)]
    for part in parts:
        writer.write(part)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(sum(map(len, parts))), 10)
    took = time.monotonic() - started
    assert got == b"".join(parts)
    # One way up and one way down, 150 ms each: never faster than that.
    assert took >= 0.29
    await proxy.heal()
    assert await _roundtrip(reader, writer, b"again") == b"again"
    writer.close()


async def test_blackhole_keeps_the_connection_but_forwards_nothing(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port, capture=True) as proxy:
        await _blackhole_checks(proxy)


async def _blackhole_checks(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"before") == b"before"
    await proxy.blackhole()
    writer.write(b"lost")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.5)
    # New connections are accepted too, and get nothing either.
    reader2, writer2 = await _connect(proxy)
    writer2.write(b"also lost")
    await writer2.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader2.read(100), 0.5)
    assert proxy.stats.dropped_bytes >= len(b"lost") + len(b"also lost")
    # The capture still sees what each client sent, per connection, dropped or not.
    captured = [(conn, data) for _ts, conn, data in proxy.captured]
    assert (1, b"lost") in captured and (2, b"also lost") in captured
    await proxy.heal()
    # Dropped bytes stay dropped; the connections themselves work again.
    assert await _roundtrip(reader, writer, b"after") == b"after"
    assert await _roundtrip(reader2, writer2, b"after2") == b"after2"
    writer.close()
    writer2.close()


async def test_blackhole_hold_delivers_everything_once_healed(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    await proxy.blackhole(drop=False)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.5)
    await proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    assert proxy.stats.dropped_bytes == 0
    writer.close()


async def test_reset_sends_rst_to_open_and_new_connections(proxy: FaultProxy) -> None:
    reader, writer = await _connect(proxy)
    assert await _roundtrip(reader, writer, b"x") == b"x"
    await proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    # A new connection is accepted and then reset: the client sees a reset, not a clean EOF.
    reader2, writer2 = await _connect(proxy)
    with pytest.raises(ConnectionResetError):
        writer2.write(b"hello")
        await writer2.drain()
        await asyncio.wait_for(reader2.read(100), 5)
    writer2.close()
    assert proxy.stats.reset_connections >= 2
    await proxy.heal()
    reader3, writer3 = await _connect(proxy)
    assert await _roundtrip(reader3, writer3, b"healed") == b"healed"
    writer3.close()


async def test_refuse_stops_listening_and_heal_listens_on_the_same_port(
    proxy: FaultProxy,
) -> None:
    port = proxy.port
    reader, writer = await _connect(proxy)
    await proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy)
    # Connections already open keep working.
    assert await _roundtrip(reader, writer, b"still") == b"still"
    writer.close()
    await proxy.heal()
    assert proxy.port == port
    reader2, writer2 = await _connect(proxy)
    assert await _roundtrip(reader2, writer2, b"back") == b"back"
    writer2.close()


async def test_dead_upstream_resets_the_client() -> None:
    with_port = FaultProxy("127.0.0.1", 1)  # nothing listens on port 1
    async with with_port as proxy:
        reader, writer = await _connect(proxy)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        assert proxy.stats.upstream_failures == 1
