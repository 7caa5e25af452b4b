"""The sandbox's reviewer side and webhook delivery over real HTTP on loopback.

A small threaded HTTP receiver records every delivery (headers and raw body) and answers with
a per-path plan of status codes; signatures are checked here with our own HMAC.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from hitl_sandbox import SandboxOptions, SandboxServer
from hitl_sandbox.options import RUNTIME_FIELDS
from hitl_sandbox.server import add_arguments, options_from_args
from tests.support import create_body

LOOP = "65f1234567890abcdef12345"
G1, G2 = "/v1", "/v1/api"
SECRET = "callback-secret"
FAST = {"review_delay_min_ms": 5, "review_delay_max_ms": 20}


@dataclass
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    """Records POSTs; ``plan[path]`` lists the statuses of the next answers (then 200);
    ``stall[path]`` requests to that path are answered only after 0.5 s."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.plan: dict[str, list[int]] = {}
        self.stall: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.hits.append(Hit(time.monotonic(), self.path, headers, raw))
                    planned = receiver.plan.get(self.path)
                    status = planned.pop(0) if planned else 200
                    stall = receiver.stall.get(self.path, 0)
                    receiver.stall[self.path] = max(stall - 1, 0)
                if stall:
                    time.sleep(0.5)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,), seed=11)) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def admin(server: SandboxServer) -> Iterator[httpx.Client]:
    defaults = SandboxOptions().model_dump(mode="json", include=set(RUNTIME_FIELDS))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.put("/sandbox/config", json=defaults).raise_for_status()
        client.post("/sandbox/reset", params={"loops": "true"}).raise_for_status()
        yield client


@pytest.fixture
def client(server: SandboxServer, admin: httpx.Client) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer key-a"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as c:
        yield c


def configure(admin: httpx.Client, **changes: Any) -> None:
    response = admin.put("/sandbox/config", json=changes)
    assert response.status_code == 200, response.text


def create(client: httpx.Client, **changes: Any) -> str:
    response = client.post(f"{G2}/loops/{LOOP}/requests", json=create_body(**changes))
    assert response.status_code == 201, response.text
    return str(response.json()["data"]["request_id"])


def stats(admin: httpx.Client) -> dict[str, Any]:
    return dict(admin.get("/sandbox/stats").json())


def settled(admin: httpx.Client) -> bool:
    hooks = stats(admin)["webhooks"]
    return not any(hooks[k] for k in ("queued", "in_flight", "held", "scheduled"))


def hmac_hex(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


# ---- completion, styles, signatures -----------------------------------------------------------


def test_auto_review_completes_and_signs_the_nested_callback(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, auto_review=True, webhook_secret=SECRET, answer_mix={"approved": 1}, **FAST)
    request_id = create(client, callback_url=receiver.url("/cb"))
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the callback")
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["x-hitl-signature-256"] == f"sha256={hmac_hex(SECRET, hit.raw)}"
    assert "x-hitl-signature" not in hit.headers
    body = hit.json
    assert body["event"] == "request.completed" and body["timestamp"].endswith("Z")
    request = body["data"]["request"]
    assert request["id"] == request_id and request["status"] == "completed"
    assert request["response_data"] == "approved"
    assert body["data"]["loop"]["id"] == LOOP
    assert body["data"]["reviewer"]["user_id"] == request["response_by"]
    assert "@" in body["data"]["reviewer"]["email"]

    got = client.get(f"{G1}/requests/{request_id}").json()["data"]["request"]
    assert got["status"] == "completed" and got["response_data"] == "approved"
    assert got["response_by"] == request["response_by"]
    assert got["response_at"] and got["response_time_seconds"] >= 0
    listed = client.get(f"{G2}/requests", params={"status": "completed"}).json()["data"]
    assert [r["id"] for r in listed["requests"]] == [request_id]
    s = stats(admin)
    assert s["auto_reviewed"] == 1 and s["by_status"]["completed"] == 1
    assert s["webhooks"]["by_event"] == {"request.completed": {"emitted": 1, "delivered": 1}}


@pytest.mark.parametrize(
    ("style", "signature"), [("flat", "plain"), ("seed", "none"), ("data_response", "sha256")]
)
def test_each_payload_style_and_signature_format(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver, style: str, signature: str
) -> None:
    configure(
        admin,
        auto_review=True,
        webhook_secret=SECRET,
        webhook_payload_style=style,
        webhook_signature=signature,
        response_data_style="structured",
        answer_mix={"Reject": 1},
        **FAST,
    )
    request_id = create(client, callback_url=receiver.url("/cb"))
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the callback")
    body = hit.json
    structured = {"selected_value": "rejected", "selected_label": "Reject"}
    if style == "flat":
        assert hit.headers["x-hitl-signature"] == hmac_hex(SECRET, hit.raw)
        assert body["request_id"] == request_id and body["status"] == "completed"
        assert body["response_data"] == structured
        assert set(body["response_by"]) == {"user_id", "name", "email"}
        assert "data" not in body
    elif style == "seed":
        assert not any(k.startswith("x-hitl") for k in hit.headers)
        assert body["data"]["decision"] == "rejected"
        assert body["data"]["request_id"] == request_id and body["data"]["reviewer_id"]
    else:
        assert hit.headers["x-hitl-signature-256"] == f"sha256={hmac_hex(SECRET, hit.raw)}"
        assert body["data"]["response_data"] == structured
        assert body["data"]["response_by_user"]["name"].startswith("Sandbox Reviewer")
    got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
    assert got["response_data"] == structured


def test_callback_without_secret_is_unsigned(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, auto_review=True, **FAST)
    create(client, callback_url=receiver.url("/cb"))
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the callback")
    assert not any(k.startswith("x-hitl") for k in hit.headers)


@pytest.mark.parametrize(
    ("response_type", "config", "default", "check"),
    [
        (
            "multi_select",
            {"options": ["A", "B", "C"], "min_selections": 1},
            ["A"],
            "selected_values",
        ),
        ("rating", {"scale_min": 1, "scale_max": 5}, 3, "rating"),
        ("number", {"min_value": 0, "max_value": 50, "decimal_places": 1}, 1, "number"),
        ("boolean", {"true_label": "Yes"}, False, "boolean"),
        ("text", {"max_length": 100}, "none", None),
    ],
)
def test_auto_review_answers_every_response_type(
    client: httpx.Client,
    admin: httpx.Client,
    response_type: str,
    config: dict[str, Any],
    default: Any,
    check: str | None,
) -> None:
    configure(admin, auto_review=True, response_data_style="structured", **FAST)
    request_id = create(
        client, response_type=response_type, response_config=config, default_response=default
    )

    def answered() -> Any:
        got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
        return got if got["status"] == "completed" else None

    data = wait_until(answered, what="the answer")["response_data"]
    if check is None:
        assert isinstance(data, str) and 1 <= len(data) <= 100
    else:
        assert check in data


# ---- retries ----------------------------------------------------------------------------------


def test_retries_follow_the_scaled_schedule_after_500s(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, auto_review=True, webhook_retry_scale=0.01, **FAST)
    receiver.plan["/cb"] = [500, 503]
    request_id = create(client, callback_url=receiver.url("/cb"))
    hits = wait_until(lambda: len(receiver.at("/cb")) == 3 and receiver.at("/cb"), what="3 tries")
    gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
    assert 0.13 <= gaps[0] <= 0.4, gaps  # 15 s * 0.01
    assert 0.55 <= gaps[1] <= 0.9, gaps  # 60 s * 0.01
    assert len({h.raw for h in hits}) == 1  # the same body every time
    wait_until(lambda: settled(admin), what="settled")
    hooks = stats(admin)["webhooks"]
    assert (hooks["sent"], hooks["delivered"], hooks["failed_attempts"]) == (3, 1, 2)
    assert hooks["retries"] == 2 and hooks["gave_up"] == 0
    rows = admin.get("/sandbox/deliveries", params={"request_id": request_id}).json()
    assert [(r["attempt"], r["status"]) for r in rows["deliveries"]] == [
        (1, 500),
        (2, 503),
        (3, 200),
    ]


@pytest.mark.parametrize(("status", "retried"), [(400, False), (404, False), (429, True)])
def test_4xx_is_final_except_408_and_429(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver, status: int, retried: bool
) -> None:
    configure(admin, auto_review=True, webhook_retry_scale=0.001, **FAST)
    receiver.plan["/cb"] = [status]
    create(client, callback_url=receiver.url("/cb"))
    wait_until(lambda: receiver.at("/cb"), what="the callback")
    wait_until(lambda: settled(admin), what="settled")
    time.sleep(0.1)
    hooks = stats(admin)["webhooks"]
    assert len(receiver.at("/cb")) == (2 if retried else 1)
    assert hooks["rejected"] == (0 if retried else 1)
    assert hooks["delivered"] == (1 if retried else 0)


def test_slow_endpoint_times_out_and_is_retried(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(
        admin, auto_review=True, webhook_timeout_seconds=0.2, webhook_retry_scale=0.001, **FAST
    )
    receiver.stall["/cb"] = 1
    request_id = create(client, callback_url=receiver.url("/cb"))
    wait_until(lambda: stats(admin)["webhooks"]["delivered"] == 1, what="the retry")
    rows = admin.get("/sandbox/deliveries", params={"request_id": request_id}).json()
    first, second = rows["deliveries"]
    assert first["status"] is None and "Timeout" in first["error"]
    assert (second["attempt"], second["status"]) == (2, 200)


def test_unreachable_endpoint_is_retried_8_times_then_given_up(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    dead = receiver.url("/cb")
    receiver.close()  # nothing listens there any more
    configure(admin, auto_review=True, webhook_retry_scale=0.00001, **FAST)
    create(client, callback_url=dead)
    hooks = wait_until(lambda: stats(admin)["webhooks"]["gave_up"] == 1 and stats(admin), 10)
    assert hooks["webhooks"]["sent"] == 8 and hooks["webhooks"]["failed_attempts"] == 8
    rows = admin.get("/sandbox/deliveries").json()["deliveries"]
    assert [r["attempt"] for r in rows] == list(range(1, 9))
    assert all(r["status"] is None and r["error"] for r in rows)


# ---- lifecycle ---------------------------------------------------------------------------------


def test_timeout_carries_null_answer_fields_as_documented(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, timeout_scale=0.001)  # 600 s → 0.6 s
    request_id = create(client, callback_url=receiver.url("/cb"), timeout_seconds=600)
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the timeout callback")
    body = hit.json
    assert body["event"] == "request.timeout"
    request = body["data"]["request"]
    assert request["status"] == "timeout" and request["previous_status"] == "pending"
    assert request["default_response"] == "rejected" and request["response_data"] is None
    assert request["response_by"] is None and request["response_time_seconds"] is None
    got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
    assert (got["status"], got["response_data"], got["response_by"], got["response_at"]) == (
        "timeout",
        None,
        None,
        None,
    )
    assert stats(admin)["timeouts"] == 1


def test_kind_timeout_option_fills_in_the_default_response(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, timeout_scale=0.001, kind_timeout_response_data=True)
    request_id = create(client, callback_url=receiver.url("/cb"), timeout_seconds=600)
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the timeout callback")
    assert hit.json["data"]["request"]["response_data"] == "rejected"
    got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
    assert (got["status"], got["response_data"], got["response_by"]) == (
        "timeout",
        "rejected",
        None,
    )
    assert stats(admin)["timeouts"] == 1


def test_respond_by_hand_validates_and_sends_the_webhooks(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, webhook_payload_style="flat")
    request_id = create(client, callback_url=receiver.url("/cb"))
    url = f"/sandbox/requests/{request_id}/respond"
    bad = admin.post(url, json={"response_data": "maybe"})
    assert bad.status_code == 400
    assert bad.json()["msg"] == "response_data must be one of the option values"
    assert admin.post(url, json={"answer": "approved"}).status_code == 400
    assert admin.post("/sandbox/requests/" + "f" * 24 + "/respond", json={}).status_code == 404
    done = admin.post(url, json={"response_data": "Approve"})
    assert done.status_code == 200 and done.json()["request"]["response_data"] == "approved"
    assert admin.post(url, json={"response_data": "approved"}).status_code == 409
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the callback")
    assert hit.json["response_data"] == "approved" and hit.json["status"] == "completed"
    got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
    assert got["status"] == "completed" and got["response_by_user"]["user_id"] == got["response_by"]
    assert stats(admin)["answered_by_hand"] == 1


def test_cancel_sends_request_cancelled(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    request_id = create(client, callback_url=receiver.url("/cb"))
    assert client.delete(f"{G2}/requests/{request_id}").status_code == 200
    (hit,) = wait_until(lambda: receiver.at("/cb"), what="the callback")
    assert hit.json["event"] == "request.cancelled"
    assert hit.json["data"]["request"]["previous_status"] == "pending"
    assert admin.post(f"/sandbox/requests/{request_id}/respond", json={}).status_code == 400


# ---- registered webhooks ----------------------------------------------------------------------


def test_registered_webhooks_on_both_paths_get_their_events_signed_with_their_secret(
    server: SandboxServer, client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    # Events of one request are 25+ ms apart here: concurrent senders do not promise order.
    configure(
        admin,
        auto_review=True,
        claim_events=True,
        escalate_share=1.0,
        review_delay_min_ms=100,
        review_delay_max_ms=150,
    )
    everything = {"url": receiver.url("/all"), "events": ["request.*"], "secret": "one"}
    seed_like = {
        "url": receiver.url("/seed"),
        "events": ["request.completed", "request.escalated"],
        "loop_id": LOOP,
        "secret": "two",
    }
    first = client.post(f"{G2}/webhooks", json=everything)
    second = client.post(f"{G1}/webhooks", json=seed_like)
    assert first.status_code == 201 and second.status_code == 201
    assert first.json()["error"] is False and first.json()["data"]["id"]
    assert "secret" not in first.json()["data"] and "secret" not in first.text.replace(
        "has_secret", ""
    )
    assert (
        client.post(f"{G2}/webhooks", json={"url": "ftp://x", "events": ["*"]}).status_code == 400
    )
    assert client.post(f"{G2}/webhooks", json={"url": everything["url"]}).status_code == 400
    listed = client.get(f"{G1}/webhooks").json()["data"]
    assert listed["count"] == 2 and {h["url"] for h in listed["webhooks"]} == {
        everything["url"],
        seed_like["url"],
    }
    other = {"Authorization": "Bearer key-b"}
    assert client.get(f"{G2}/webhooks", headers=other).json()["data"]["count"] == 0

    request_id = create(client, callback_url=receiver.url("/cb"))
    wait_until(lambda: len(receiver.at("/all")) == 3, what="3 events on /all")
    wait_until(lambda: len(receiver.at("/seed")) == 2 and receiver.at("/cb"), what="the rest")
    wait_until(lambda: settled(admin), what="settled")
    events = [h.json["event"] for h in receiver.at("/all")]
    assert events == ["request.claimed", "request.escalated", "request.completed"]
    assert [h.json["event"] for h in receiver.at("/seed")] == events[1:]
    assert [h.json["event"] for h in receiver.at("/cb")] == ["request.completed"]
    for path, secret in (("/all", "one"), ("/seed", "two")):
        for hit in receiver.at(path):
            assert hit.headers["x-hitl-signature-256"] == f"sha256={hmac_hex(secret, hit.raw)}"
    claimed = receiver.at("/all")[0].json["data"]["request"]
    assert claimed["id"] == request_id and claimed["status"] == "claimed"
    assert claimed["claimed_by"] and claimed["claimed_at"]
    s = stats(admin)
    assert (s["claims"], s["escalations"], s["auto_reviewed"]) == (1, 1, 1)
    assert s["api_calls"]["POST /webhooks"] == {"201": 2, "400": 2}
    assert s["api_calls"]["GET /webhooks"] == {"200": 2}
    assert len(admin.get("/sandbox/webhooks").json()["webhooks"]) == 2
    admin.post("/sandbox/reset")
    assert client.get(f"{G2}/webhooks").json()["data"]["count"] == 0


def test_webhook_registration_is_rate_limited_like_any_call(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, rate_limit_calls=1)
    hook = {"url": receiver.url("/x"), "events": ["*"]}
    assert client.post(f"{G2}/webhooks", json=hook).status_code == 201
    assert client.post(f"{G2}/webhooks", json=hook).status_code == 429


# ---- faults -------------------------------------------------------------------------------------


def test_drop_and_duplicate_shares_are_roughly_respected(
    client: httpx.Client, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(
        admin,
        auto_review=True,
        webhook_drop_share=0.2,
        webhook_duplicate_share=0.1,
        webhook_delay_ms=20,
        **FAST,
    )
    ids = [create(client, callback_url=receiver.url("/cb")) for _ in range(400)]
    wait_until(lambda: stats(admin)["auto_reviewed"] == 400, what="all answered")
    wait_until(lambda: settled(admin), what="settled")
    hooks = stats(admin)["webhooks"]
    assert 50 <= hooks["dropped"] <= 110, hooks
    assert 15 <= hooks["duplicated"] <= 60, hooks
    received = receiver.at("/cb")
    assert len(received) == 400 - hooks["dropped"] + hooks["duplicated"] == hooks["delivered"]
    # Dropped deliveries are simply not sent: polling still finds every answer.
    listed = client.get(f"{G2}/requests", params={"status": "completed", "limit": 100}).json()
    assert listed["data"]["total"] == len(ids)


def test_reorder_sends_a_held_delivery_after_the_next_one(receiver: Receiver) -> None:
    # One sender, so without the fault deliveries arrive exactly in answer order.
    options = SandboxOptions(preset_loops=(LOOP,), seed=5, webhook_concurrency=1)
    with (
        SandboxServer(options) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": "Bearer k"}) as c,
    ):
        c.put("/sandbox/config", json={"webhook_reorder_share": 0.3})
        ids = [create(c, callback_url=receiver.url("/cb")) for _ in range(60)]
        for request_id in ids:
            answer = {"response_data": "approved"}
            c.post(f"/sandbox/requests/{request_id}/respond", json=answer).raise_for_status()
        wait_until(lambda: len(receiver.at("/cb")) == 60, what="all deliveries")
        arrived = [h.json["data"]["request"]["id"] for h in receiver.at("/cb")]
        hooks = c.get("/sandbox/stats").json()["webhooks"]
    assert sorted(arrived) == sorted(ids)
    assert 8 <= hooks["reordered"] <= 32, hooks
    late = sum(1 for n, rid in enumerate(arrived) if ids.index(rid) < n)
    assert late >= hooks["reordered"] // 2  # held ones arrive after later answers
    assert arrived != ids


# ---- scale, configuration, shutdown -------------------------------------------------------------


def test_5000_requests_are_auto_reviewed_and_delivered(
    server: SandboxServer, admin: httpx.Client, receiver: Receiver
) -> None:
    configure(admin, auto_review=True, review_delay_min_ms=0, review_delay_max_ms=200)
    callback = receiver.url("/cb")

    async def create_all() -> None:
        headers = {"Authorization": "Bearer key-a"}
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=32))
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, transport=transport
        ) as c:
            url = f"{G2}/loops/{LOOP}/requests"
            gate = asyncio.Semaphore(32)

            async def one() -> None:
                async with gate:
                    response = await c.post(url, json=create_body(callback_url=callback))
                    assert response.status_code == 201

            await asyncio.gather(*(one() for _ in range(5000)))

    started = time.monotonic()
    asyncio.run(create_all())
    wait_until(lambda: len(receiver.at("/cb")) == 5000, timeout=60, what="5000 callbacks")
    elapsed = time.monotonic() - started
    s = stats(admin)
    assert s["auto_reviewed"] == 5000 and s["by_status"]["completed"] == 5000
    assert s["webhooks"]["delivered"] == 5000
    assert len({h.json["data"]["request"]["id"] for h in receiver.at("/cb")}) == 5000
    assert elapsed < 30, elapsed


def test_cli_flags_build_the_options() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--auto-review",
            "--review-delay-min-ms=1",
            "--review-delay-max-ms=2",
            '--answer-mix={"approved": 3, "rejected": 1}',
            "--claim-events",
            "--escalate-share=0.1",
            "--response-data-style=structured",
            "--timeout-scale=0.01",
            "--webhook-payload-style=seed",
            "--webhook-signature=plain",
            "--webhook-secret=s",
            "--webhook-retry-scale=0.5",
            "--webhook-timeout-seconds=3",
            "--webhook-drop-share=0.1",
            "--webhook-duplicate-share=0.2",
            "--webhook-reorder-share=0.3",
            "--webhook-delay-ms=40",
        ]
    )
    options = options_from_args(args)
    assert options.auto_review and options.claim_events
    assert options.answer_mix == {"approved": 3, "rejected": 1}
    assert options.webhook_payload_style == "seed" and options.webhook_signature == "plain"
    assert (options.webhook_drop_share, options.webhook_reorder_share) == (0.1, 0.3)
    assert options.timeout_scale == 0.01 and options.response_data_style == "structured"


def test_config_rejects_bad_reviewer_settings(admin: httpx.Client) -> None:
    for bad in (
        {"webhook_payload_style": "xml"},
        {"webhook_signature": "md5"},
        {"review_delay_min_ms": 10, "review_delay_max_ms": 5},
        {"escalate_share": 1.5},
        {"answer_mix": {"approved": -1}},
        {"webhook_concurrency": 4},  # fixed at start
    ):
        assert admin.put("/sandbox/config", json=bad).status_code == 400, bad
    config = admin.get("/sandbox/config").json()
    assert config["webhook_payload_style"] == "nested" and config["auto_review"] is False


def test_switching_auto_review_on_answers_open_requests(
    client: httpx.Client, admin: httpx.Client
) -> None:
    request_id = create(client)
    time.sleep(0.05)
    assert (
        client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]["status"] == "pending"
    )
    configure(admin, auto_review=True, **FAST)
    wait_until(lambda: stats(admin)["auto_reviewed"] == 1, what="the answer")


def test_stop_is_prompt_with_retries_pending(receiver: Receiver) -> None:
    receiver.plan["/cb"] = [500] * 10
    options = SandboxOptions(preset_loops=(LOOP,), auto_review=True, **FAST)
    server = SandboxServer(options)
    server.start()
    with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer k"}) as c:
        create(c, callback_url=receiver.url("/cb"))
    wait_until(lambda: receiver.at("/cb"), what="the first try")
    thread = server._thread
    started = time.monotonic()
    server.stop()
    server.stop()
    assert time.monotonic() - started < 5
    assert thread is not None and not thread.is_alive()


def test_cli_defaults_are_the_documented_behaviour_and_kind_options_are_named() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    faithful = options_from_args(parser.parse_args([]))
    assert not faithful.honour_idempotency_key
    assert not faithful.kind_cancel_claimed and not faithful.kind_timeout_response_data
    assert faithful.webhook_secret is None  # callback_url deliveries unsigned, as documented
    kind = options_from_args(
        parser.parse_args(
            ["--honour-idempotency-key", "--kind-cancel-claimed", "--kind-timeout-response-data"]
        )
    )
    assert kind.honour_idempotency_key and kind.kind_cancel_claimed
    assert kind.kind_timeout_response_data
    # The old flag still parses; ignoring the key is the default now.
    assert not options_from_args(parser.parse_args(["--ignore-idempotency"])).honour_idempotency_key
