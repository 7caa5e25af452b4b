"""Webhook load for ``bench.webhook``, run as its own process so it never shares the gateway's CPU.

``python -m bench.loadgen_webhooks bodies --out F --n N --prefix P --secret S`` writes N distinct,
validly signed ``request.completed`` deliveries (nested P1 shape, as the sandbox sends them),
one ``<hex signature>\\t<json body>`` line each, for the wrk Lua script.

``python -m bench.loadgen_webhooks fixed --url U --rate R --seconds D ...`` is an open-loop
sender: request ``i`` is due at ``t0 + i / R`` whatever happened before; it goes out on an idle
keep-alive connection (or waits for one), and its latency is measured from the *scheduled*
time, so a stall of the gateway shows up in the percentiles instead of slowing the sender down
(no coordinated omission). Prints one JSON line with counts and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import hmac
import sys
import time
from pathlib import Path
from typing import Any, cast

import orjson

PATH = "/webhooks/hitl"
LOOP_ID = "bench-loop"


def payload(request_id: str, i: int) -> bytes:
    """A P1 ``request.completed`` delivery like the sandbox's (``data.request`` nested)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    body = {
        "event": "request.completed",
        "timestamp": stamp,
        "data": {
            "request": {
                "id": request_id,
                "loop_id": LOOP_ID,
                "status": "completed",
                "priority": "medium",
                "request_type": "single_select",
                "response_data": "approve" if i % 3 else "reject",
                "response_by": "reviewer-1",
                "response_at": stamp,
                "response_time_seconds": 1.25,
                "created_at": stamp,
                "updated_at": stamp,
            },
            "loop": {"id": LOOP_ID, "name": "Preset bench-loop", "creator_id": "u-1"},
            "reviewer": {"user_id": "reviewer-1", "email": "reviewer@example.com"},
        },
    }
    return orjson.dumps(body)


def signed(prefix: str, n: int, secret: bytes) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        body = payload(f"{prefix}-{i}", i)
        out.append((hmac.new(secret, body, hashlib.sha256).hexdigest(), body))
    return out


def write_bodies(path: Path, prefix: str, n: int, secret: bytes) -> None:
    with path.open("wb") as f:
        for sig, body in signed(prefix, n, secret):
            f.write(sig.encode() + b"\t" + body + b"\n")


def raw_request(host: str, sig: str, body: bytes) -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-HITL-Signature-256: sha256={sig}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, sender: _Sender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.due = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        self.buf = self.buf[end + 4 + length :]
        self.sender.done(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sender.lost(self)


class _Sender:
    def __init__(self, requests: list[bytes], rate: float) -> None:
        self.requests = requests
        self.rate = rate
        self.idle: list[_Conn] = []
        self.waiting: collections.deque[tuple[bytes, float]] = collections.deque()
        self.latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.lost_connections = 0
        self.finished = asyncio.Event()
        self.outstanding = 0
        self.max_lag = 0.0
        self.finished_sending = False

    def submit(self, data: bytes, due: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(data, due)
        else:
            self.waiting.append((data, due))

    def done(self, conn: _Conn, status: int) -> None:
        self.latencies.append(time.perf_counter() - conn.due)
        self.statuses[status] += 1
        self.outstanding -= 1
        if self.waiting:
            data, due = self.waiting.popleft()
            conn.send(data, due)
        else:
            self.idle.append(conn)
        if self.outstanding == 0 and self.finished_sending:
            self.finished.set()

    def lost(self, conn: _Conn) -> None:
        self.lost_connections += 1
        if conn in self.idle:
            self.idle.remove(conn)

    async def run(self) -> None:
        t0 = time.perf_counter() + 0.05
        i, n = 0, len(self.requests)
        while i < n:
            now = time.perf_counter()
            due_upto = min(n, int((now - t0) * self.rate) + 1)
            if due_upto > i:
                self.max_lag = max(self.max_lag, now - (t0 + i / self.rate))
            while i < due_upto:
                self.submit(self.requests[i], t0 + i / self.rate)
                i += 1
            nxt = t0 + i / self.rate
            delay = nxt - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
        self.finished_sending = True
        if self.outstanding == 0:
            self.finished.set()


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def fixed_rate(args: argparse.Namespace) -> dict[str, Any]:
    host, _, port = args.url.removeprefix("http://").partition(":")
    port = port.rstrip("/")
    n = int(args.rate * args.seconds)
    secret = args.secret.encode()
    requests = [raw_request(f"{host}:{port}", s, b) for s, b in signed(args.prefix, n, secret)]
    sender = _Sender(requests, args.rate)
    loop = asyncio.get_running_loop()
    for _ in range(args.connections):
        _, conn = await loop.create_connection(lambda: _Conn(sender), host, int(port))
        sender.idle.append(conn)
    started = time.perf_counter()
    await sender.run()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sender.finished.wait(), timeout=args.drain_seconds)
    elapsed = time.perf_counter() - started
    ordered = sorted(sender.latencies)
    ok = sum(c for s, c in sender.statuses.items() if 200 <= s < 300)
    return {
        "rate": args.rate,
        "scheduled": n,
        "answered": len(ordered),
        "ok": ok,
        "statuses": {str(k): v for k, v in sender.statuses.items()},
        "unanswered": n - len(ordered),
        "lost_connections": sender.lost_connections,
        "elapsed_s": elapsed,
        "max_sender_lag_ms": sender.max_lag * 1000,
        "p50_ms": _pct(ordered, 0.50) * 1000,
        "p99_ms": _pct(ordered, 0.99) * 1000,
        "p999_ms": _pct(ordered, 0.999) * 1000,
        "max_ms": (ordered[-1] if ordered else float("nan")) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen_webhooks")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bodies")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--prefix", required=True)
    b.add_argument("--secret", required=True)
    f = sub.add_parser("fixed")
    f.add_argument("--url", required=True)
    f.add_argument("--rate", type=float, required=True)
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--connections", type=int, default=64)
    f.add_argument("--prefix", required=True)
    f.add_argument("--secret", required=True)
    f.add_argument("--drain-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if args.cmd == "bodies":
        write_bodies(args.out, args.prefix, args.n, args.secret.encode())
        return
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(fixed_rate(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
