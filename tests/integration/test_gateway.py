"""The gateway over real HTTP with its real Kafka sink: contract, hostile input, Kafka down.

The server runs in its own thread and event loop (like a deployed gateway) so that the
property-based fuzz can drive it with a plain HTTP client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.config import GatewaySettings, Settings
from connector.gateway.app import GatewayApp, GatewayConfig, gateway_server
from connector.gateway.sink import KafkaCallbackSink
from connector.hitl.signing import sign
from connector.hitl.tokens import make_callback_token
from connector.kafka.admin import ensure_topics
from connector.metrics import Metrics
from connector.serving import HttpServer
from tests.integration.harness import read_all, run_settings

pytestmark = pytest.mark.kafka

SECRETS = (b"old-secret", b"new-secret")
TOKEN_SECRET = b"token-secret"
LIMIT = 64 * 1024


def outcome(app: GatewayApp, name: str) -> int:
    """A webhook outcome's count, from the app's Prometheus registry."""
    assert app.metrics is not None
    registry = app.metrics.registry
    value = registry.get_sample_value("hitl_connector_webhooks_received_total", {"outcome": name})
    return int(value or 0)


@dataclass
class Running:
    url: str
    settings: Settings
    app: GatewayApp
    stop: Any
    server: HttpServer


def start_gateway(
    settings: Settings, mode: str, server_settings: GatewaySettings | None = None
) -> Running:
    """The gateway on its own loop in a thread; ``server_settings`` for its HTTP limits."""
    limits = server_settings or GatewaySettings(host="127.0.0.1", port=0)
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop

        async def main() -> None:
            await ensure_topics(settings, create=True)
            sink = KafkaCallbackSink(
                settings.kafka,
                settings.topics.callbacks,
                settings.topics.unmatched,
                timeout_seconds=3.0,
            )
            await sink.start()
            config = GatewayConfig(
                mode, SECRETS, (TOKEN_SECRET,), LIMIT, limits.body_timeout_seconds
            )
            app = GatewayApp(config, sink, metrics=Metrics())
            server = gateway_server(app, limits)
            await server.start()
            box.update(app=app, url=server.url, server=server, done=asyncio.Event())
            ready.set()
            await box["done"].wait()
            await server.stop()
            await sink.stop()

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60), "gateway did not start"

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["done"].set)
        thread.join(30)

    return Running(box["url"], settings, box["app"], stop, box["server"])


@pytest.fixture(scope="module")
def required(kafka_bootstrap: str) -> Iterator[Running]:
    running = start_gateway(run_settings(kafka_bootstrap, "http://127.0.0.1:9"), "required")
    yield running
    running.stop()


def nested(request_id: str, event: str = "request.completed") -> bytes:
    return orjson.dumps(
        {
            "event": event,
            "timestamp": "2026-11-27T10:00:00Z",
            "data": {
                "request": {
                    "id": request_id,
                    "status": "completed",
                    "response_data": "Approve",
                    "response_by": "65f1234567890abcdef12350",
                }
            },
        }
    )


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, path: str = "/webhooks/hitl"
) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=body, headers=h, timeout=15)


async def produced(running: Running) -> list[Any]:
    return await read_all(
        running.settings.kafka.bootstrap_servers, running.settings.topics.callbacks
    )


async def test_contract_answers(required: Running) -> None:
    url = required.url
    body = nested("req-ok")
    good = {"X-HITL-Signature-256": "sha256=" + sign(body, SECRETS[1])}
    assert post(url, body, good).status_code == 200
    assert post(url, body, {"X-HITL-Signature": sign(body, SECRETS[0])}).status_code == 200
    forged = {"X-HITL-Signature-256": "sha256=" + sign(body, b"wrong")}
    assert post(url, nested("req-forged"), forged).status_code == 401
    assert post(url, nested("req-missing")).status_code == 401
    tampered = body.replace(b"Approve", b"Apprave")
    assert post(url, tampered, good).status_code == 401
    junk = b"{not json"
    kept = post(url, junk, {"X-HITL-Signature": sign(junk, SECRETS[0])})
    assert kept.status_code == 200 and kept.json() == {"status": "kept", "reason": "invalid_json"}
    big = b"x" * (LIMIT + 1)
    assert post(url, big, {"X-HITL-Signature": sign(big, SECRETS[0])}).status_code == 413
    # The content type is not authenticated: a signed JSON body is used whatever it says.
    r = httpx.post(
        url + "/webhooks/hitl", content=body, headers={"content-type": "text/plain", **good}
    )
    assert r.status_code == 200 and r.json() == {"status": "accepted"}
    assert httpx.get(url + "/webhooks/hitl").status_code == 405
    assert httpx.get(url + "/nope").status_code == 404
    loop_event = orjson.dumps({"event": "loop.created", "data": {"loop": {"id": "l1"}}})
    r = post(url, loop_event, {"X-HITL-Signature": sign(loop_event, SECRETS[0])})
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert httpx.get(url + "/healthz").status_code == 200
    records = await produced(required)
    assert [rec.key for rec in records] == [b"req-ok"] * 3, "only accepted deliveries"
    unmatched = await read_all(
        required.settings.kafka.bootstrap_servers, required.settings.topics.unmatched
    )
    raw = [orjson.loads(r.value) for r in unmatched if r.key is None]
    assert [(v["reason"], v["raw"]) for v in raw] == [("invalid_json", "{not json")]
    value = orjson.loads(records[0].value)
    assert value["callback"]["status"] == "completed" and value["via"] == "webhook"


async def test_callback_token_route(required: Running) -> None:
    url = required.url
    body = orjson.dumps(
        {
            "event": "request.completed",
            "request_id": "req-tok",
            "status": "completed",
            "response_data": "Approve",
        }
    )
    sig = {"X-HITL-Signature": sign(body, SECRETS[0])}
    token = make_callback_token("event-7", TOKEN_SECRET)
    assert post(url, body, sig, path=f"/webhooks/hitl/cb/{token}").status_code == 200
    assert post(url, body, sig, path=f"/webhooks/hitl/cb/{token[:-2]}xx").status_code == 401
    other = make_callback_token("event-7", b"other-secret")
    assert post(url, body, sig, path=f"/webhooks/hitl/cb/{other}").status_code == 401
    # The token authenticates callback_url deliveries: unsigned, or signed with a secret the
    # gateway does not have (counted as unverified_signature), both accepted.
    path = f"/webhooks/hitl/cb/{token}"
    before = outcome(required.app, "unverified_signature")
    assert post(url, body, path=path).status_code == 200
    assert post(url, body, {"X-HITL-Signature": "0" * 64}, path=path).status_code == 200
    assert outcome(required.app, "unverified_signature") == before + 1
    mine = [orjson.loads(r.value) for r in await produced(required) if r.key == b"req-tok"]
    assert [m["token_event_id"] for m in mine] == ["event-7"] * 3


# Header values a client can actually send (HTTP forbids control characters).
header_text = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")
header_values = st.one_of(
    st.text(header_text, max_size=80),
    st.just(""),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256=" + h),
    st.text(header_text, min_size=2000, max_size=3000),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "event",
                    "data",
                    "request",
                    "request_id",
                    "id",
                    "status",
                    "response_data",
                    "response_by",
                    "x",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=500),
    json_values.map(orjson.dumps),
    st.builds(lambda d: b"[" * d + b"]" * d, st.integers(1, 5000)),
)


FUZZ: dict[str, int] = {"examples": 0, "5xx": 0, "refused_by_client": 0}


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=bodies,
    sig=st.none() | header_values,
    sig256=st.none() | header_values,
    ctype=st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
        ]
    ),
    path=st.sampled_from(
        ["/webhooks/hitl", "/webhooks/hitl/cb/abc", "/webhooks/hitl/cb/" + "A" * 3000]
    ),
    sign_it=st.booleans(),
)
def test_fuzz_never_5xx(
    required: Running,
    body: bytes,
    sig: str | None,
    sig256: str | None,
    ctype: str,
    path: str,
    sign_it: bool,
) -> None:
    headers: dict[str, str] = {"content-type": ctype}
    if sig is not None:
        headers["X-HITL-Signature"] = sig
    if sig256 is not None:
        headers["X-HITL-Signature-256"] = sig256
    if sign_it:
        headers["X-HITL-Signature"] = sign(body, SECRETS[0])
    safe = [(k, v.encode("latin-1", "replace")) for k, v in headers.items()]
    try:
        r = httpx.post(required.url + path, content=body, headers=safe, timeout=15)
    except httpx.LocalProtocolError:
        FUZZ["refused_by_client"] += 1
        return  # the client refused to send it; nothing reached the server
    FUZZ["examples"] += 1
    if r.status_code >= 500:
        FUZZ["5xx"] += 1
    # Only unauthenticated (401) or oversized (413) deliveries get a 4xx; an authenticated
    # one that cannot be used is kept and answered 200.
    assert r.status_code in {200, 401, 413}, (r.status_code, r.text)
    if sign_it and r.status_code == 401:
        assert path != "/webhooks/hitl", "a validly signed delivery was refused"


def test_fuzz_report() -> None:
    print(f"\ngateway fuzz: {FUZZ}")
    assert FUZZ["5xx"] == 0
    assert FUZZ["examples"] + FUZZ["refused_by_client"] >= 1000


async def test_kafka_down_means_503_with_retry_after_then_accepted(
    kafka_broker: Any, kafka_bootstrap: str
) -> None:
    running = start_gateway(run_settings(kafka_bootstrap, "http://127.0.0.1:9"), "accept-any")
    try:
        body = nested("req-outage")
        assert post(running.url, body).status_code == 200
        kafka_broker.pause()
        try:
            started = time.monotonic()
            r = await asyncio.to_thread(post, running.url, nested("req-during"))
            waited = time.monotonic() - started
        finally:
            kafka_broker.resume()
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert waited < 10, "the answer must come well inside HITL.sh's 30-second limit"
        deadline = time.monotonic() + 60
        while True:  # the sender retries after Retry-After
            r = await asyncio.to_thread(post, running.url, nested("req-during"))
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert r.status_code == 200
        keys = [rec.key for rec in await produced(running)]
        assert b"req-during" in keys
    finally:
        running.stop()
