"""A real TCP fault proxy for tests: listen on a loopback port, forward to an upstream.

The issue allows toxiproxy "or an equivalent"; this is the equivalent, in asyncio, so CI
needs no Go build. It sits between a client (the connector) and a server (the sandbox, the
broker) and is switched between modes at runtime, from the test's event loop:

- ``await proxy.heal()``        pass bytes through unchanged (the start mode);
- ``await proxy.latency(ms)``   deliver every chunk ``ms`` (± ``jitter_ms``) later, order kept,
                                new connections are also connected upstream that much later;
- ``await proxy.blackhole()``   accept and keep connections but forward nothing: bytes are
                                read and dropped (toxiproxy's ``timeout`` toxic with 0);
                                ``drop=False`` holds them instead (up to 64 chunks per
                                direction, then TCP backpressure; all held flows once healed);
- ``await proxy.reset()``       abort every open connection with a TCP RST (``SO_LINGER`` 0)
                                on both sides, and reset each new one as soon as it arrives;
- ``await proxy.refuse()``      stop listening: new connections get "connection refused";
                                open ones keep passing bytes. Any other mode listens again on
                                the same port.

``stats`` counts connections (accepted, active, peak, reset, refused upstream) and bytes in
each direction (plus bytes dropped). With ``capture=True`` every chunk read from a client is
kept in ``captured`` as ``(wall time, connection number, bytes)`` whatever the mode, so a test
can see each attempt a client made even while nothing reaches the upstream. Use it as an
async context manager::

    async with FaultProxy("127.0.0.1", upstream_port) as proxy:
        url = f"http://{proxy.address}"
        await proxy.blackhole()
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

Mode = Literal["pass", "latency", "blackhole", "reset", "refuse"]

_CHUNK = 65_536
_QUEUE_CHUNKS = 64  # per direction: bounded memory under latency
_LINGER_RST = struct.pack("ii", 1, 0)
# Per direction: (monotonic due time, chunk), None = EOF.
_Queue = asyncio.Queue[tuple[float, bytes] | None]


@dataclass
class ProxyStats:
    accepted: int = 0
    active: int = 0
    peak_active: int = 0
    reset_connections: int = 0
    upstream_failures: int = 0
    bytes_up: int = 0  # client → upstream, delivered
    bytes_down: int = 0  # upstream → client, delivered
    dropped_bytes: int = 0


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Conn:
    def __init__(self, number: int, client: asyncio.StreamWriter) -> None:
        self.number = number
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def abort(self, *, rst: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if rst:
                _rst(writer)
            else:
                writer.close()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class FaultProxy:
    """One listening port forwarding to ``upstream_host:upstream_port``; see the module doc."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        capture: bool = False,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.stats = ProxyStats()
        self.capture = capture
        self.captured: list[tuple[float, int, bytes]] = []
        self._mode: Mode = "pass"
        self._drop = True
        self._delay = 0.0
        self._jitter = 0.0
        self._rng = random.Random(seed)  # jitter, not security
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def address(self) -> str:
        """``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        await self._listen()

    async def stop(self) -> None:
        self._close_listener()
        for conn in list(self._conns):
            conn.abort(rst=False)
        tasks = [t for c in self._conns for t in c.tasks] + list(self._handlers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._conns.clear()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_accept, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _close_listener(self) -> None:
        if self._server is not None:
            # Not ``wait_closed``: on newer Pythons it waits for every connection to end.
            self._server.close()
            self._server = None

    # --- modes ---------------------------------------------------------------------------

    async def _set(self, mode: Mode) -> None:
        self._mode = mode
        if mode == "refuse":
            self._close_listener()
        else:
            await self._listen()
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()

    async def heal(self) -> None:
        """Pass everything through again (held bytes flow on)."""
        self._delay = self._jitter = 0.0
        await self._set("pass")

    async def latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        self._delay, self._jitter = ms / 1000.0, jitter_ms / 1000.0
        await self._set("latency")

    async def blackhole(self, *, drop: bool = True) -> None:
        self._drop = drop
        await self._set("blackhole")

    async def reset(self) -> None:
        """RST every open connection now, and each new one while this mode lasts."""
        await self._set("reset")
        for conn in list(self._conns):
            self.stats.reset_connections += 1
            conn.abort(rst=True)

    async def refuse(self) -> None:
        await self._set("refuse")

    # --- forwarding ----------------------------------------------------------------------

    def _current_delay(self) -> float:
        if self._mode != "latency":
            return 0.0
        if self._jitter <= 0:
            return self._delay
        return max(0.0, self._delay + self._rng.uniform(-self._jitter, self._jitter))

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._mode == "reset":
            self.stats.reset_connections += 1
            _rst(writer)
            return
        conn = _Conn(self.stats.accepted, writer)
        self._conns.add(conn)
        self.stats.active += 1
        self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        try:
            delay = self._current_delay()
            if delay:
                await asyncio.sleep(delay)
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                self.stats.upstream_failures += 1
                conn.abort(rst=True)
                return
            conn.upstream = up_writer
            if conn.closed:  # reset while we connected
                _rst(up_writer)
                return
            up: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
            down: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
            conn.tasks = [
                asyncio.ensure_future(self._read(conn, reader, up, self.capture)),
                asyncio.ensure_future(self._write(conn, up_writer, up, "up")),
                asyncio.ensure_future(self._read(conn, up_reader, down, False)),
                asyncio.ensure_future(self._write(conn, writer, down, "down")),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            conn.abort(rst=False)
        finally:
            self._conns.discard(conn)
            self.stats.active -= 1

    async def _read(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        queue: _Queue,
        capture: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(_CHUNK)
                if capture and data:
                    self.captured.append((time.time(), conn.number, data))
                if not data:
                    await queue.put(None)
                    return
                if self._mode == "blackhole" and self._drop:
                    self.stats.dropped_bytes += len(data)
                    continue
                await queue.put((loop.time() + self._current_delay(), data))
        except (OSError, asyncio.IncompleteReadError):
            conn.abort(rst=True)

    async def _write(
        self,
        conn: _Conn,
        writer: asyncio.StreamWriter,
        queue: _Queue,
        direction: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self._mode == "blackhole":
                    if self._drop:
                        self.stats.dropped_bytes += len(data)
                        continue
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except OSError:
            conn.abort(rst=True)
