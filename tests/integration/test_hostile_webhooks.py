"""Hostile webhooks against a real connector (every role, gateway served by uvicorn) on the
real broker, with requests the sandbox holds pending (nobody reviews them).

Each case names the status it must get. The suite then counts, from the topics themselves:
decisions produced by forged deliveries (must be 0), authenticated deliveries answered 2xx but
not durable on ``hitl.callbacks`` or the unmatched topic (must be 0), and 5xx answers (must
be 0). It prints its table. Slow bodies and idle connections are the HTTP server's to bound:
their own tests below assert the bound.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from connector.app import ConnectorApp
from connector.config import Settings
from connector.hitl.signing import sign
from connector.hitl.tokens import make_callback_token
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    decision_settings,
    offsets,
    produce,
    read_all,
    sandbox_get,
    wait_until,
    webhook_outcomes,
)

pytestmark = pytest.mark.kafka

LOOP = "loop-hostile"
HITL_SECRET = "whsec-hostile"  # what the sandbox (HITL.sh) signs with; the gateway has it
TOKEN_NEW, TOKEN_OLD, TOKEN_RETIRED = "token-2026-12", "token-2026-06", "token-2025-12"
LIMIT = 64 * 1024
# The slowest a delivery may take to be answered or dropped (gateway read limits).
BOUND_SECONDS = 15.0
IDLE_CONNECTIONS = 200


@dataclass
class Case:
    name: str
    expected: int
    request: str | None  # the request the delivery is about (None: none)
    authenticated: bool
    status: int = 0
    seconds: float = 0.0
    durable: bool | None = None  # authenticated and 2xx: found on a topic?


def completed(request_id: str, status: str = "completed", answer: str = "approve") -> bytes:
    return orjson.dumps(
        {
            "event": "request.completed",
            "data": {
                "request": {"id": request_id, "status": status, "response_data": answer},
            },
        }
    )


@pytest.fixture
async def hostile(kafka_bootstrap: str, connector_apps: Any) -> Any:
    options = SandboxOptions(
        preset_loops=(LOOP,), auto_review=False, webhook_secret=HITL_SECRET, seed=13
    )
    with SandboxServer(options) as sandbox:
        settings = decision_settings(
            kafka_bootstrap,
            sandbox.url,
            gateway={
                "secrets": [HITL_SECRET],
                "token_secrets": [TOKEN_NEW, TOKEN_OLD],
                "max_body_bytes": LIMIT,
            },
            resolver={"reconcile": False},  # only webhooks can decide here
            loops={"default": LOOP},
        )
        app = await connector_apps(settings, "all")
        n = 10
        items = [
            (f"k-h{i}".encode(), orjson.dumps({"id": f"ev-h{i}", "content": f"post {i}"}))
            for i in range(n)
        ]
        await produce(kafka_bootstrap, settings.topics.input, items)

        async def created() -> bool:
            got = await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/requests")
            return len(got["requests"]) >= n

        await wait_until(created, timeout=60, what="requests created")
        requests = (await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/requests"))[
            "requests"
        ]
        by_event = {r["context"]["connector"]["event_id"]: r["id"] for r in requests}
        yield settings, app, by_event


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, float]:
    started = time.monotonic()
    r = await client.post(
        url, content=body, headers={"content-type": "application/json", **(headers or {})}
    )
    return r.status_code, time.monotonic() - started


async def _idle(host: str, port: int, n: int) -> list[tuple[asyncio.StreamReader, Any]]:
    return [await asyncio.open_connection(host, port) for _ in range(n)]


async def test_hostile_webhooks_table(hostile: Any) -> None:
    settings, app, by_event = hostile
    assert isinstance(app, ConnectorApp) and isinstance(settings, Settings)
    base = f"http://127.0.0.1:{settings.gateway.port}"
    hook = base + "/webhooks/hitl"

    def cb(event_id: str, secret: str = TOKEN_NEW) -> str:
        return f"{base}/webhooks/hitl/cb/{make_callback_token(event_id, secret)}"

    def signed(body: bytes, secret: str = HITL_SECRET) -> dict[str, str]:
        return {"X-HITL-Signature-256": "sha256=" + sign(body, secret)}

    r = [by_event[f"ev-h{i}"] for i in range(10)]
    cases: list[Case] = []

    async def run(case: Case, url: str, body: bytes, headers: dict[str, str] | None) -> None:
        case.status, case.seconds = await _post(client, url, body, headers)
        cases.append(case)

    async with httpx.AsyncClient(timeout=30) as client:
        await run(Case("forged unsigned", 401, r[0], False), hook, completed(r[0]), None)
        body = completed(r[0])
        await run(Case("forged, wrong secret", 401, r[0], False), hook, body, signed(body, "x"))
        genuine = completed(r[1])
        await run(Case("genuine", 200, r[1], True), hook, genuine, signed(genuine))
        await run(Case("replayed genuine", 200, r[1], True), hook, genuine, signed(genuine))
        # A valid URL for one event used to answer another event's request.
        other = completed(r[3])
        await run(Case("token for another event", 200, r[3], True), cb("ev-h2"), other, None)
        body = completed(r[7])
        await run(
            Case("token from a rotated-out secret", 401, r[7], False),
            cb("ev-h7", TOKEN_RETIRED),
            body,
            None,
        )
        await run(
            Case("forged token", 401, r[7], False), base + "/webhooks/hitl/cb/x.y", body, None
        )
        body = completed(r[4])
        await run(
            Case("unknown secret, valid token", 200, r[4], True),
            cb("ev-h4"),
            body,
            signed(body, "a-secret-we-do-not-have"),
        )
        body = completed(r[8])
        await run(
            Case("old token secret (rotation)", 200, r[8], True), cb("ev-h8", TOKEN_OLD), body, None
        )
        junk = b'{"event": "request.completed", "data": {"request_id": '
        await run(Case("malformed, authenticated", 200, None, True), hook, junk, signed(junk))
        body = completed(r[5], status="answered")
        await run(Case("unknown status", 200, r[5], True), hook, body, signed(body))
        big = b'{"pad": "' + b"x" * LIMIT + b'"}'
        await run(Case("oversized", 413, None, True), hook, big, signed(big))
        # Many idle connections open: a genuine delivery is still answered in time.
        idle = await _idle("127.0.0.1", settings.gateway.port, IDLE_CONNECTIONS)
        try:
            body = completed(r[6])
            case = Case(f"genuine with {IDLE_CONNECTIONS} idle connections", 200, r[6], True)
            await run(case, hook, body, signed(body))
        finally:
            for _, writer in idle:
                writer.close()

    # What reached the topics once the resolver has read every callback.
    bootstrap = settings.kafka.bootstrap_servers

    async def joined() -> bool:
        snap = await offsets(
            bootstrap, f"{settings.kafka.group_id}-resolver", settings.topics.callbacks
        )
        return snap.done and snap.total_end > 0

    await wait_until(joined, timeout=60, what="the resolver to read every callback")
    callbacks = await read_all(bootstrap, settings.topics.callbacks)
    unmatched = await read_all(bootstrap, settings.topics.unmatched)
    decisions = [
        orjson.loads(rec.value) for rec in await read_all(bootstrap, settings.topics.output)
    ]
    on_callbacks = collections.Counter(rec.key.decode() for rec in callbacks if rec.key)
    kept = [orjson.loads(rec.value) for rec in unmatched]
    decided = collections.Counter(d["request_id"] for d in decisions)

    kept_raw = [k for k in kept if k.get("callback") is None]
    for case in cases:
        if not case.authenticated or case.status != 200:
            continue
        if case.name == "malformed, authenticated":
            case.durable = any(
                k["raw"] == junk.decode() and k["reason"] == "invalid_json" for k in kept_raw
            )
        elif case.name == "unknown status":
            case.durable = any(
                k["request_id"] == r[5] and k["reason"] == "unknown_status" for k in kept_raw
            )
        else:
            case.durable = on_callbacks[case.request] > 0

    forged_requests = {r[0], r[3], r[5], r[7]}  # only forgeries or unusable deliveries named them
    forgeries_accepted = sum(decided[rid] for rid in forged_requests)
    lost = sum(1 for c in cases if c.durable is False)
    server_errors = sum(1 for c in cases if c.status >= 500)
    lines = [f"{'case':<40} {'want':>4} {'got':>4} {'secs':>6} {'durable':>8} {'decisions':>9}"]
    for c in cases:
        durable = "-" if c.durable is None else ("yes" if c.durable else "NO")
        n = decided[c.request] if c.request else 0
        lines.append(
            f"{c.name:<40} {c.expected:>4} {c.status:>4} {c.seconds:>6.2f} {durable:>8} {n:>9}"
        )
    lines.append(
        f"forgeries accepted (decisions) {forgeries_accepted}; authenticated deliveries lost "
        f"{lost}; 5xx {server_errors}; decisions {len(decisions)}; kept {len(kept_raw)}; "
        f"gateway outcomes {dict(sorted(webhook_outcomes(app).items()))}"
    )
    print("\nhostile webhooks:\n" + "\n".join(lines))

    assert [(c.name, c.status) for c in cases] == [(c.name, c.expected) for c in cases]
    assert forgeries_accepted == 0 and lost == 0 and server_errors == 0
    assert all(c.seconds < BOUND_SECONDS for c in cases)
    # Exactly one decision for each request a genuine delivery answered, whatever the replays.
    assert {rid: decided[rid] for rid in (r[1], r[4], r[6], r[8])} == dict.fromkeys(
        (r[1], r[4], r[6], r[8]), 1
    )
    assert sum(decided.values()) == 4
    # Refused deliveries left no record on any topic.
    refused_only = (r[0], r[7])
    assert all(on_callbacks[rid] == 0 for rid in refused_only)
    assert not [rec for rec in unmatched if (rec.key or b"").decode() in refused_only]
    mismatch = [rec for rec in unmatched if (rec.key or b"").decode() == r[3]]
    assert mismatch, "the delivery with another event's token must be on the unmatched topic"


async def _slow_body(host: str, port: int, seconds: float) -> tuple[str, float]:
    """Send a signed-size header block, then one body byte a second for ``seconds``; how the
    server ended it (``answered``, ``closed`` or ``waiting``) and when."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    writer.write(
        b"POST /webhooks/hitl HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: 4096\r\n\r\n"
    )
    await writer.drain()
    try:
        while time.monotonic() - started < seconds:
            try:
                data = await asyncio.wait_for(reader.read(1024), timeout=1.0)
            except TimeoutError:
                writer.write(b" ")
                try:
                    await writer.drain()
                except ConnectionError:
                    return "closed", time.monotonic() - started
                continue
            return ("answered" if data else "closed"), time.monotonic() - started
        return "waiting", time.monotonic() - started
    finally:
        writer.close()


async def _closed_within(readers: list[Any], seconds: float) -> int:
    """How many of the idle connections the server closed within ``seconds``."""

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(1), timeout=seconds) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    return sum(await asyncio.gather(*(closed(reader) for reader, _ in readers)))


async def test_slow_body_is_answered_or_closed_within_the_bound(hostile: Any) -> None:
    settings, _, _ = hostile
    how, took = await _slow_body("127.0.0.1", settings.gateway.port, BOUND_SECONDS + 10)
    print(f"\nslow body: {how} after {took:.1f}s (bound {BOUND_SECONDS}s)")
    assert how in ("answered", "closed") and took <= BOUND_SECONDS


async def test_idle_connections_are_closed_within_the_bound(hostile: Any) -> None:
    settings, _, _ = hostile
    idle = await _idle("127.0.0.1", settings.gateway.port, IDLE_CONNECTIONS)
    try:
        closed = await _closed_within(idle, BOUND_SECONDS)
    finally:
        for _, writer in idle:
            writer.close()
    print(f"\nidle connections: {closed}/{IDLE_CONNECTIONS} closed within {BOUND_SECONDS}s")
    assert closed == IDLE_CONNECTIONS
