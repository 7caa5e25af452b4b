"""``connector.serving``: the server's writes of one loop turn go out as one, and nothing held
is lost when the connection ends. A recording transport is the seam; the gateway's raw-socket
tests (tests/integration/test_gateway_server.py) run the same server over TCP."""

from __future__ import annotations

import asyncio
import socket

from connector.serving import HttpServer, _CoalescedWrites


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


async def test_the_writes_of_one_loop_turn_go_out_as_one() -> None:
    real = Recording()
    writes = _CoalescedWrites(real, asyncio.get_running_loop())
    writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    writes.write(b"ok")
    assert real.writes == [] and writes.get_write_buffer_size() == 40
    await asyncio.sleep(0)  # the end of the turn
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    writes.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    real = Recording()
    writes = _CoalescedWrites(real, asyncio.get_running_loop())
    writes.write(b"answer")
    writes.close()
    assert real.writes == [b"answer"] and real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert real.writes == [b"answer"]

    real = Recording()
    writes = _CoalescedWrites(real, asyncio.get_running_loop())
    writes.write(b"dropped")
    writes.abort()
    await asyncio.sleep(0)
    assert real.writes == [] and real.aborted


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b'{"status":"ok"}' not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


async def _healthz(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] != "http":
        return
    body = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


async def test_a_half_closed_request_still_gets_its_whole_answer() -> None:
    """The client sends its request and shuts its side: the server answers, then closes."""
    server = HttpServer(_healthz, "127.0.0.1", 0)
    await server.start()
    try:

        def ask() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                sock.shutdown(socket.SHUT_WR)
                return _read_answer(sock)

        for _ in range(20):
            answer = await asyncio.to_thread(ask)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
    finally:
        await server.stop()
