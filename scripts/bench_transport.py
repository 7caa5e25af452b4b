"""Transport benchmark for ``HitlClient``: stock httpx 0.28 versus httpx-aiohttp.

Starts a minimal loopback HTTP server in a subprocess (aiohttp.web on uvloop, so its CPU is
not counted against the client) that answers ``POST /v1/api/loops/{id}/requests`` with a 201
JSON body, then drives N creates through the real ``HitlClient`` (pacer and breaker included;
the server sends no rate-limit headers and the configured budget is huge) at several
concurrency levels. Prints req/s and client CPU µs per request (``time.process_time``) and
the aiohttp/httpx ratios. Not a test: it asserts nothing.

    /tmp/venv/bin/python scripts/bench_transport.py [--requests 5000] [--loop both]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.config import HitlSettings  # noqa: E402
from connector.hitl.client import HitlClient  # noqa: E402

REPLY = (
    b'{"error":false,"msg":"Request created and broadcasted successfully","data":'
    b'{"request_id":"65f1234567890abcdef12348","status":"pending","timeout_at":'
    b'"2030-03-15T11:30:00Z","polling_url":"/v1/api/requests/65f1234567890abcdef12348"}}'
)
BODY: dict[str, Any] = {
    "processing_type": "time-sensitive",
    "type": "markdown",
    "priority": "medium",
    "request_text": "Please review: " + "x" * 200,
    "response_type": "single_select",
    "response_config": {"options": [{"value": "approved", "label": "Approve"}]},
    "default_response": "approved",
    "timeout_seconds": 3600,
    "platform": "api",
}


def serve() -> None:
    """The server process: print the port, then serve until killed."""
    import uvloop
    from aiohttp import web

    async def create(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, body=REPLY, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/api/loops/{loop}/requests", create)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        print(port, flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


async def drive(
    port: int, kind: Literal["h1", "aiohttp", "httpx"], in_flight: int, requests: int
) -> tuple[float, float]:
    """(req/s, client CPU µs per request) for ``requests`` creates at ``in_flight``."""
    settings = HitlSettings(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key="bench-key",
        transport=kind,
        max_in_flight=in_flight,
        rate_limit_calls=1_000_000_000,
        rate_limit_window_seconds=1.0,
        max_retries=0,
    )
    async with HitlClient(settings) as client:

        async def run(prefix: str, n: int) -> None:
            numbers = iter(range(n))

            async def worker() -> None:
                for i in numbers:
                    await client.create_request("bench-loop", BODY, idempotency_key=f"{prefix}{i}")

            await asyncio.gather(*(worker() for _ in range(in_flight)))

        await run("warm", 200)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await run("k", requests)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return requests / wall, cpu / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
        print(f"{args.requests} creates per run, server on 127.0.0.1:{port} (own process)")
        print(f"{'loop':8} {'in_flight':>9} {'transport':>9} {'req/s':>9} {'cpu_us/req':>10}")
        for loop_name in loops:
            runner = _runner(loop_name)
            for in_flight in args.in_flight:
                results: dict[str, tuple[float, float]] = {}
                for kind in ("httpx", "aiohttp", "h1"):
                    rate, cpu = runner(drive(port, kind, in_flight, args.requests))
                    results[kind] = (rate, cpu)
                    print(f"{loop_name:8} {in_flight:>9} {kind:>9} {rate:>9.0f} {cpu:>10.0f}")
                (h_rate, h_cpu), (a_rate, a_cpu) = results["httpx"], results["aiohttp"]
                print(
                    f"{'':8} {'':>9} {'ratio':>9} {a_rate / h_rate:>8.2f}x "
                    f"{a_cpu / h_cpu:>9.2f}x  (aiohttp / httpx)"
                )
    finally:
        server.terminate()
        server.wait(timeout=10)


def _runner(name: str) -> Callable[[Any], tuple[float, float]]:
    if name == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


if __name__ == "__main__":
    main()
