"""The sandbox over real HTTP on loopback: documented API, limits, faults and admin endpoints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from hitl_sandbox import SandboxOptions, SandboxServer
from hitl_sandbox.options import RUNTIME_FIELDS
from tests.support import create_body

LOOP = "65f1234567890abcdef12345"
G1, G2 = "/v1", "/v1/api"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,), seed=7)) as running:
        yield running


@pytest.fixture
def admin(server: SandboxServer) -> Iterator[httpx.Client]:
    defaults = SandboxOptions().model_dump(mode="json", include=set(RUNTIME_FIELDS))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/sandbox/reset", params={"loops": "true"}).raise_for_status()
        client.put("/sandbox/config", json=defaults).raise_for_status()
        yield client


def api(server: SandboxServer, key: str = "key-a") -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
def client(server: SandboxServer, admin: httpx.Client) -> Iterator[httpx.Client]:
    with api(server) as c:
        yield c


def create(client: httpx.Client, prefix: str = G2, **changes: Any) -> str:
    response = client.post(f"{prefix}/loops/{LOOP}/requests", json=create_body(**changes))
    assert response.status_code == 201, response.text
    return str(response.json()["data"]["request_id"])


def configure(admin: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = admin.put("/sandbox/config", json=changes)
    assert response.status_code == 200, response.text
    return dict(response.json())


# ---- documented API -------------------------------------------------------------------------


@pytest.mark.parametrize(("create_prefix", "read_prefix"), [(G1, G2), (G2, G1)])
def test_create_in_one_path_style_is_readable_in_the_other(
    client: httpx.Client, create_prefix: str, read_prefix: str
) -> None:
    response = client.post(f"{create_prefix}/loops/{LOOP}/requests", json=create_body())
    assert response.status_code == 201
    body = response.json()
    assert body["error"] is False
    assert body["msg"] == "Request created and broadcasted successfully"
    data = body["data"]
    request_id = data["request_id"]
    assert len(request_id) == 24 and int(request_id, 16) >= 0
    assert data["status"] == "pending"
    assert (data["processing_type"], data["type"], data["priority"]) == (
        "time-sensitive",
        "markdown",
        "high",
    )
    assert data["broadcasted_to"] == 3 and data["notifications_sent"] == 3
    assert data["polling_url"] == f"/v1/api/requests/{request_id}"
    assert data["timeout_at"].endswith("Z")

    got = client.get(f"{read_prefix}/requests/{request_id}")
    assert got.status_code == 200
    request = got.json()["data"]["request"]
    assert request["id"] == request_id and request["loop_id"] == LOOP
    assert request["status"] == "pending"
    for field in ("response_by", "response_at", "response_data", "response_time_seconds"):
        assert request[field] is None
    documented = {
        "creator_id", "api_key_id", "request_text", "image_url", "context", "platform",
        "platform_version", "response_type", "response_config", "default_response",
        "timeout_at", "callback_url", "broadcasted_to", "broadcasted_at", "created_at",
        "updated_at",
    }  # fmt: skip
    assert documented <= request.keys()
    assert isinstance(request["broadcasted_to"], list) and len(request["broadcasted_to"]) == 3


def test_test_endpoint_is_never_under_api(client: httpx.Client) -> None:
    response = client.get("/v1/test")
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["account_status"] == "active" and "requests:write" in data["permissions"]
    assert client.get("/v1/api/test").status_code == 404


def test_validation_errors_use_the_documented_envelope(client: httpx.Client) -> None:
    url = f"{G2}/loops/{LOOP}/requests"
    response = client.post(url, json=create_body(priority="normal"))
    assert response.status_code == 400
    assert response.json() == {
        "error": True,
        "msg": "Validation failed",
        "data": {
            "field": "priority",
            "issue": "priority must be one of: low, medium, high, critical",
        },
    }
    missing = create_body()
    del missing["timeout_seconds"]
    assert client.post(url, json=missing).json()["data"] == {
        "field": "timeout_seconds",
        "issue": "timeout_seconds is required for time-sensitive requests",
    }
    bad_config = client.post(url, json=create_body(response_config={}))
    assert bad_config.json()["msg"] == "Invalid response configuration"
    assert bad_config.json()["data"]["issue"] == "options array required for select response type"
    garbage = client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert garbage.status_code == 400 and garbage.json()["msg"] == "Invalid request body"


@pytest.mark.parametrize(
    ("headers", "msg"),
    [
        ({}, "API key required"),
        ({"Authorization": "Basic abc"}, "Missing or invalid authorization header"),
        ({"Authorization": "Bearer"}, "Missing or invalid authorization header"),
    ],
)
def test_missing_or_malformed_authorization_is_401(
    server: SandboxServer, admin: httpx.Client, headers: dict[str, str], msg: str
) -> None:
    response = httpx.get(f"{server.url}/v1/api/requests", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": True, "msg": msg}


def test_configured_keys_reject_others(server: SandboxServer, admin: httpx.Client) -> None:
    configure(admin, api_keys=["good-key"])
    with api(server, "good-key") as good, api(server, "other-key") as other:
        assert good.get("/v1/test").status_code == 200
        rejected = other.get("/v1/test")
        assert rejected.status_code == 401
        assert rejected.json() == {"error": True, "msg": "Invalid API key"}


@pytest.mark.parametrize("prefix", [G1, G2])
def test_unknown_loop_is_404(client: httpx.Client, prefix: str) -> None:
    missing = "0" * 24
    for response in (
        client.post(f"{prefix}/loops/{missing}/requests", json=create_body()),
        client.get(f"{prefix}/loops/{missing}"),
        client.get(f"{prefix}/loops/{missing}/requests"),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": True, "msg": "Loop not found"}


def test_loops_create_list_get_and_use(client: httpx.Client) -> None:
    created = client.post(f"{G1}/loops", json={"name": "Moderation", "icon": "🛡️"})
    assert created.status_code == 201
    data = created.json()["data"]
    loop = data["loop"]
    assert {"invite_code", "qr_code_url", "join_url"} <= data.keys()
    assert loop["member_count"] == 3 and len(loop["id"]) == 24
    listed = client.get(f"{G2}/loops").json()["data"]
    assert {item["id"] for item in listed["loops"]} == {loop["id"], LOOP}
    assert client.get(f"{G2}/loops/{loop['id']}").json()["data"]["loop"]["name"] == "Moderation"
    request_id = create(client, G1, request_text="in my loop")
    response = client.post(f"{G2}/loops/{loop['id']}/requests", json=create_body())
    assert response.status_code == 201
    in_loop = client.get(f"{G2}/loops/{loop['id']}/requests").json()["data"]
    assert in_loop["count"] == 1 and in_loop["requests"][0]["id"] != request_id
    no_name = client.post(f"{G2}/loops", json={"icon": "x"})
    assert no_name.status_code == 400
    assert no_name.json()["data"] == {"field": "name", "issue": "Field is required"}


def test_list_filters_sorting_and_paging(client: httpx.Client) -> None:
    ids = [create(client, priority=p) for p in ("low", "critical", "medium", "high", "low")]
    assert client.delete(f"{G2}/requests/{ids[2]}").status_code == 200

    page = client.get(f"{G2}/requests", params={"limit": 2}).json()["data"]
    assert [r["id"] for r in page["requests"]] == [ids[4], ids[3]]  # created_at_desc default
    assert (page["count"], page["total"], page["has_more"]) == (2, 5, True)
    assert page["pagination"] == {"limit": 2, "offset": 0, "next_offset": 2}
    last = client.get(f"{G1}/requests", params={"limit": 2, "offset": 4}).json()["data"]
    assert [r["id"] for r in last["requests"]] == [ids[0]]
    assert last["has_more"] is False and last["pagination"]["next_offset"] is None

    asc = client.get(f"{G2}/requests", params={"sort": "created_at_asc"}).json()["data"]
    assert [r["id"] for r in asc["requests"]] == ids
    by_priority = client.get(f"{G2}/requests", params={"sort": "priority_desc"}).json()["data"]
    assert [r["priority"] for r in by_priority["requests"]] == [
        "critical", "high", "medium", "low", "low",
    ]  # fmt: skip
    cancelled = client.get(f"{G2}/requests", params={"status": "cancelled"}).json()["data"]
    assert [r["id"] for r in cancelled["requests"]] == [ids[2]]
    low = client.get(f"{G2}/requests", params={"priority": "low", "status": "pending"})
    assert {r["id"] for r in low.json()["data"]["requests"]} == {ids[0], ids[4]}
    assert client.get(f"{G2}/requests", params={"loop_id": "x" * 24}).json()["data"]["total"] == 0
    for bad in ({"limit": 0}, {"limit": 101}, {"status": "done"}, {"sort": "random"}):
        assert client.get(f"{G2}/requests", params=bad).status_code == 400


def test_cancel_only_pending(client: httpx.Client) -> None:
    request_id = create(client)
    first = client.delete(f"{G1}/requests/{request_id}")
    assert first.status_code == 200
    assert first.json()["data"]["status"] == "cancelled"
    again = client.delete(f"{G2}/requests/{request_id}")
    assert again.status_code == 400
    assert again.json() == {"error": True, "msg": "Request cannot be cancelled in current state"}
    missing = client.delete(f"{G2}/requests/{'f' * 24}")
    assert missing.status_code == 404 and missing.json()["msg"] == "Request not found"
    got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
    assert got["status"] == "cancelled"


def _claimed(client: httpx.Client, admin: httpx.Client) -> str:
    configure(
        admin, auto_review=True, claim_events=True, review_delay_min_ms=600, review_delay_max_ms=600
    )
    request_id = create(client)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
        if got["status"] == "claimed":
            return request_id
        time.sleep(0.02)
    raise AssertionError("the request was never claimed")


def test_claimed_requests_cannot_be_cancelled_as_documented(
    client: httpx.Client, admin: httpx.Client
) -> None:
    refused = client.delete(f"{G2}/requests/{_claimed(client, admin)}")
    assert refused.status_code == 400
    assert refused.json()["msg"] == "Request cannot be cancelled in current state"


def test_kind_cancel_claimed_option_allows_the_g1_behaviour(
    client: httpx.Client, admin: httpx.Client
) -> None:
    request_id = _claimed(client, admin)
    configure(admin, kind_cancel_claimed=True)
    done = client.delete(f"{G2}/requests/{request_id}")
    assert done.status_code == 200 and done.json()["data"]["previous_status"] == "claimed"


LIST_ITEM_FIELDS = {
    "id",
    "loop_id",
    "processing_type",
    "type",
    "priority",
    "request_text",
    "response_type",
    "status",
    "response_data",
    "response_by",
    "response_at",
    "response_time_seconds",
    "timeout_at",
    "created_at",
    "updated_at",
}


def test_list_endpoints_return_exactly_the_documented_fields(client: httpx.Client) -> None:
    request_id = create(client, context={"connector": {"ident": "abc"}})
    items = client.get(f"{G2}/requests").json()["data"]["requests"]
    assert [set(item) for item in items] == [LIST_ITEM_FIELDS]  # no context (hitl-api §2.4)
    page = client.get(f"{G2}/loops/{LOOP}/requests").json()["data"]
    assert set(page) == {"loop_id", "requests", "count"}
    (whole,) = page["requests"]  # whole Request objects (§2.5), as GET requests/{id}
    assert whole == client.get(f"{G2}/requests/{request_id}").json()["data"]["request"]
    assert whole["context"] == {"connector": {"ident": "abc"}}
    newer = create(client)
    paged = client.get(f"{G2}/loops/{LOOP}/requests", params={"limit": 1, "offset": 1}).json()
    assert [r["id"] for r in paged["data"]["requests"]] == [request_id]  # newest first
    first = client.get(f"{G2}/loops/{LOOP}/requests", params={"limit": 1}).json()["data"]
    assert [r["id"] for r in first["requests"]] == [newer] and first["count"] == 1
    assert client.get(f"{G2}/loops/{LOOP}/requests", params={"limit": 101}).status_code == 400


def test_keys_see_only_their_own_requests(server: SandboxServer, client: httpx.Client) -> None:
    mine = create(client)
    with api(server, "key-b") as other:
        assert other.get(f"{G2}/requests").json()["data"]["total"] == 0
        denied = other.get(f"{G2}/requests/{mine}")
        assert denied.status_code == 403
        assert denied.json()["msg"] == "Access denied to this request"
        assert other.delete(f"{G1}/requests/{mine}").status_code == 403
        own_loop = client.post(f"{G2}/loops", json={"name": "A only", "icon": "a"}).json()
        loop_id = own_loop["data"]["loop"]["id"]
        assert other.get(f"{G2}/loops/{loop_id}").status_code == 403
        blocked = other.post(f"{G2}/loops/{loop_id}/requests", json=create_body())
        assert blocked.status_code == 403
        assert blocked.json()["msg"] == "Only loop creators can create requests"
        assert loop_id not in {
            loop["id"] for loop in other.get(f"{G1}/loops").json()["data"]["loops"]
        }
        create(other)  # preset loops are shared
        assert other.get(f"{G2}/requests").json()["data"]["total"] == 1


# ---- idempotency ----------------------------------------------------------------------------


def test_idempotency_key_is_ignored_by_default_as_documented(
    client: httpx.Client, admin: httpx.Client
) -> None:
    url = f"{G2}/loops/{LOOP}/requests"
    headers = {"Idempotency-Key": "same"}
    ids = {client.post(url, json=create_body(), headers=headers).json()["data"]["request_id"]}
    ids.add(client.post(url, json=create_body(), headers=headers).json()["data"]["request_id"])
    assert len(ids) == 2
    assert admin.get("/sandbox/stats").json()["idempotent_replays"] == 0


def test_honour_idempotency_key_option_replays_the_original_response(
    server: SandboxServer, client: httpx.Client, admin: httpx.Client
) -> None:
    configure(admin, honour_idempotency_key=True)
    url = f"{G2}/loops/{LOOP}/requests"
    headers = {"Idempotency-Key": "event-42"}
    first = client.post(url, json=create_body(), headers=headers)
    replay = client.post(url, json=create_body(), headers=headers)
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    with api(server, "key-b") as other:  # scoped per API key
        assert other.post(url, json=create_body(), headers=headers).json() != first.json()
    stats = admin.get("/sandbox/stats").json()
    assert (stats["creates"], stats["idempotent_replays"]) == (2, 1)
    stored = admin.get("/sandbox/requests").json()["requests"]
    assert [r["idempotency_key"] for r in stored] == ["event-42", "event-42"]


# ---- rate limiting --------------------------------------------------------------------------


def wait_for_window_start(window: int, margin: float = 0.3) -> None:
    """Sleep so the test's calls fall well inside one fixed window."""
    into = time.time() % window
    if into > window - 1.0:
        time.sleep(window - into + 0.05)
    elif into < margin:
        time.sleep(margin - into)


def test_rate_limit_headers_429_and_exact_reset(client: httpx.Client, admin: httpx.Client) -> None:
    window = 2
    configure(admin, rate_limit_calls=3, rate_limit_window_seconds=window)
    wait_for_window_start(window)
    responses = [client.get("/v1/test") for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in responses} == {"3"}
    resets = {int(r.headers["X-RateLimit-Reset"]) for r in responses}
    assert len(resets) == 1
    reset = resets.pop()
    assert reset % window == 0 and 0 < reset - time.time() <= window
    limited = responses[-1].json()
    assert limited["msg"] == "API rate limit exceeded"
    assert limited["data"]["usage_count"] == 5  # 429s count too
    assert limited["data"]["usage_limit"] == 3 and limited["data"]["remaining"] == 0
    assert "Retry-After" not in responses[-1].headers

    time.sleep(max(0.0, reset - time.time()))
    after = client.get("/v1/test")
    assert after.status_code == 200
    assert after.headers["X-RateLimit-Remaining"] == "2"
    assert int(after.headers["X-RateLimit-Reset"]) == reset + window

    calls = admin.get("/sandbox/calls").json()["calls"]
    assert [c["status"] for c in calls] == [200, 200, 200, 429, 429, 200]
    assert all(c["ts"] < reset for c in calls[:5]) and calls[5]["ts"] >= reset
    stats = admin.get("/sandbox/stats").json()
    assert stats["rate_limited"] == 2
    assert stats["api_calls"]["GET /test"] == {"200": 4, "429": 2}


def test_rate_limit_retry_after_is_optional(client: httpx.Client, admin: httpx.Client) -> None:
    configure(
        admin, rate_limit_calls=1, rate_limit_window_seconds=3600, rate_limit_retry_after=True
    )
    client.get("/v1/test")
    limited = client.get(f"{G2}/requests")
    assert limited.status_code == 429
    reset = int(limited.headers["X-RateLimit-Reset"])
    assert 0 <= int(limited.headers["Retry-After"]) - (reset - time.time()) < 1.5


def test_unlimited_sends_no_rate_limit_headers(client: httpx.Client) -> None:
    assert "X-RateLimit-Limit" not in client.get("/v1/test").headers


# ---- faults ---------------------------------------------------------------------------------


def test_outage_answers_503_with_retry_after_then_recovers(
    client: httpx.Client, admin: httpx.Client
) -> None:
    configure(admin, outage_seconds=0.6, outage_retry_after=7, rate_limit_calls=100)
    down = client.post(f"{G2}/loops/{LOOP}/requests", json=create_body())
    assert down.status_code == 503
    assert down.json() == {"error": True, "msg": "Service temporarily unavailable"}
    assert down.headers["Retry-After"] == "7"
    assert "X-RateLimit-Remaining" not in down.headers
    configure(admin, outage_retry_after_http_date=True)  # keeps the running outage
    dated = client.get("/v1/test")
    assert dated.status_code == 503
    assert parsedate_to_datetime(dated.headers["Retry-After"]).timestamp() > time.time()
    time.sleep(0.7)
    up = client.get("/v1/test")
    assert up.status_code == 200 and up.headers["X-RateLimit-Remaining"] == "99"
    stats = admin.get("/sandbox/stats").json()
    assert stats["creates"] == 0 and stats["errors_injected"] == {"outage_503": 2}


def test_error_rate_answers_500_and_creates_nothing(
    client: httpx.Client, admin: httpx.Client
) -> None:
    configure(admin, error_rate=1.0)
    response = client.post(f"{G2}/loops/{LOOP}/requests", json=create_body())
    assert response.status_code == 500
    assert response.json() == {"error": True, "msg": "Internal server error"}
    configure(admin, error_rate=0.5)
    codes = [client.get("/v1/test").status_code for _ in range(60)]
    assert 10 < codes.count(500) < 50 and set(codes) == {200, 500}
    stats = admin.get("/sandbox/stats").json()
    assert stats["creates"] == 0 and stats["errors_injected"]["error_500"] == codes.count(500) + 1


def test_reject_rule_fails_only_marked_events(client: httpx.Client, admin: httpx.Client) -> None:
    configure(admin, reject_marker="POISON", reject_msg="Invalid response configuration")
    url = f"{G2}/loops/{LOOP}/requests"
    rejected = client.post(url, json=create_body(request_text="this is POISON"))
    assert rejected.status_code == 400
    assert rejected.json() == {"error": True, "msg": "Invalid response configuration"}
    assert client.post(url, json=create_body(request_text="fine")).status_code == 201


def test_ambiguous_success_stores_then_drops_and_replay_recovers(
    client: httpx.Client, admin: httpx.Client
) -> None:
    configure(admin, ambiguous_marker="FLAKY", honour_idempotency_key=True)
    url = f"{G2}/loops/{LOOP}/requests"
    headers = {"Idempotency-Key": "evt-1"}
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json=create_body(request_text="FLAKY one"), headers=headers)
    stored = admin.get("/sandbox/requests").json()["requests"]
    assert len(stored) == 1
    # Only a service that honours the key (an option here; HITL.sh documents none) replays.
    retry = client.post(url, json=create_body(request_text="FLAKY one"), headers=headers)
    assert retry.status_code == 201
    assert retry.json()["data"]["request_id"] == stored[0]["id"]
    assert admin.get("/sandbox/stats").json()["errors_injected"] == {"dropped_after_create": 1}


def test_latency_is_added_to_api_calls_only(client: httpx.Client, admin: httpx.Client) -> None:
    configure(admin, latency_ms=300)
    started = time.monotonic()
    client.get("/v1/test")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    admin.get("/sandbox/stats")
    assert time.monotonic() - started < 0.3


# ---- admin ----------------------------------------------------------------------------------


def test_admin_requests_show_everything_and_filter(
    client: httpx.Client, admin: httpx.Client
) -> None:
    url = f"{G1}/loops/{LOOP}/requests"
    body = create_body(context={"event_id": "e1"}, callback_url="http://127.0.0.1:1/cb", tags=["t"])
    first = client.post(url, json=body, headers={"Idempotency-Key": "k1"})
    second = create(client)
    client.delete(f"{G2}/requests/{second}")
    everything = admin.get("/sandbox/requests").json()["requests"]
    record = next(r for r in everything if r["id"] == first.json()["data"]["request_id"])
    assert record["context"] == {"event_id": "e1"}
    assert record["callback_url"] == "http://127.0.0.1:1/cb"
    assert record["idempotency_key"] == "k1"
    assert record["api_key_id"] == client.get("/v1/test").json()["data"]["api_key_id"]
    assert "tags" not in record
    cancelled = admin.get("/sandbox/requests", params={"status": "cancelled"}).json()["requests"]
    assert [r["id"] for r in cancelled] == [second]
    one = admin.get(f"/sandbox/requests/{second}").json()["request"]
    assert one["status"] == "cancelled"

    stats = admin.get("/sandbox/stats").json()
    assert stats["creates"] == 2 and stats["pending"] == 1
    assert stats["unknown_fields"] == {"tags": 1}
    assert stats["api_calls"]["POST /loops/{id}/requests"] == {"201": 2}
    assert stats["api_calls"]["DELETE /requests/{id}"] == {"200": 1}
    styles = [c["style"] for c in admin.get("/sandbox/calls").json()["calls"]]
    assert styles[:3] == ["g1", "g2", "g2"]

    assert admin.post("/sandbox/reset").json() == {"reset": True}
    assert admin.get("/sandbox/requests").json() == {"requests": []}
    assert admin.get("/sandbox/stats").json()["creates"] == 0
    assert admin.get("/sandbox/calls").json() == {"calls": []}


def test_admin_loops_and_config(server: SandboxServer, admin: httpx.Client) -> None:
    shared = admin.post("/sandbox/loops", json={"id": "a" * 24, "name": "Shared"})
    assert shared.status_code == 201
    owned = admin.post("/sandbox/loops", json={"id": "b" * 24, "api_key": "key-a"})
    assert owned.json()["owner_key_id"] is not None
    assert admin.post("/sandbox/loops", json={"id": "a" * 24}).status_code == 200
    with api(server, "key-a") as a, api(server, "key-b") as b:
        assert b.post(f"{G2}/loops/{'a' * 24}/requests", json=create_body()).status_code == 201
        assert b.post(f"{G2}/loops/{'b' * 24}/requests", json=create_body()).status_code == 403
        assert a.post(f"{G2}/loops/{'b' * 24}/requests", json=create_body()).status_code == 201

    config = admin.get("/sandbox/config").json()
    assert config["preset_loops"] == [LOOP] and config["outage_until"] is None
    assert admin.put("/sandbox/config", json={"preset_loops": []}).status_code == 400
    assert admin.put("/sandbox/config", json={"error_rate": 2}).status_code == 400
    admin.post("/sandbox/reset", params={"loops": "true"})
    assert admin.post("/sandbox/loops", json={"id": "a" * 24}).status_code == 201  # was dropped
