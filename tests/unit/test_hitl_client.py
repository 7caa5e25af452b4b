"""HitlClient against ``httpx.MockTransport`` in virtual time (see ``test_hitl_pacing``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest
from httpx_aiohttp import AiohttpTransport

from connector.config import HitlSettings
from connector.errors import HitlAmbiguousError, HitlPermanentError, HitlUnavailableError
from connector.hitl.client import HitlClient, build_http
from connector.hitl.pacing import Clock
from connector.hitl.retry import RateLimitInfo
from tests.unit.test_hitl_pacing import FixedWindowServer, run_virtual

API_KEY = "hitl_live_S3CRET-KEY-do-not-leak"
Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


def settings(**overrides: Any) -> HitlSettings:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "rate_limit_calls": 1000,
        "rate_limit_window_seconds": 60,
        "backoff_base_seconds": 0.5,
        "backoff_max_seconds": 8,
    }
    values.update(overrides)
    return HitlSettings(**values)


def created(request_id: str = "65f1234567890abcdef12348", **headers: str) -> httpx.Response:
    body = {
        "error": False,
        "msg": "Request created and broadcasted successfully",
        "data": {
            "request_id": request_id,
            "status": "pending",
            "timeout_at": "2024-03-15T11:30:00Z",
            "polling_url": f"/v1/api/requests/{request_id}",
        },
    }
    return httpx.Response(201, json=body, headers=headers)


def error(status: int, msg: str, data: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": True, "msg": msg, "data": data}, headers=headers)


class Recorder:
    """A scripted server: answers in order (the last one repeats) and logs every call."""

    def __init__(self, clock: Clock, *answers: httpx.Response | Exception) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.calls: list[tuple[float, httpx.Request]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((self.clock.monotonic(), request))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.calls]

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times)]


def run_client(
    body: Callable[[HitlClient, Recorder, Clock], Awaitable[Any]],
    *answers: httpx.Response | Exception,
    wall0: float = 1_700_000_000.0,
    **overrides: Any,
) -> Recorder:
    async def main(clock: Clock) -> Recorder:
        server = Recorder(clock, *answers)
        client = HitlClient(
            settings(**overrides),
            transport=httpx.MockTransport(server),
            rng=random.Random(3),
            clock=clock,
        )
        async with client:
            await body(client, server, clock)
        return server

    return run_virtual(main, wall0=wall0)


async def create(client: HitlClient, key: str = "idem-1", **kw: Any) -> Any:
    return await client.create_request("loop1", {"request_text": "hi"}, idempotency_key=key, **kw)


# --- URLs, headers, parsing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "base", "url"),
    [
        ("api/", "https://api.hitl.sh/v1", "https://api.hitl.sh/v1/api/loops/loop1/requests"),
        ("", "https://api.hitl.sh/v1/", "https://api.hitl.sh/v1/loops/loop1/requests"),
    ],
)
def test_create_url_and_headers(prefix: str, base: str, url: str) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        result = await create(client)
        assert result.request_id == "65f1234567890abcdef12348"
        assert result.status == "pending"
        assert result.polling_url == "/v1/api/requests/65f1234567890abcdef12348"

    server = run_client(body, created(), path_prefix=prefix, base_url=base)
    (_, request) = server.calls[0]
    assert str(request.url) == url
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("hitl-kafka-connector/")
    assert request.headers["idempotency-key"] == "idem-1"
    assert orjson.loads(request.content) == {"request_text": "hi"}


@pytest.mark.parametrize("prefix", ["api/", ""])
def test_test_endpoint_is_never_prefixed_and_feeds_the_pacer(prefix: str) -> None:
    reply = {
        "error": False,
        "data": {
            "email": "a@b.c",
            "rate_limit": {"limit": 100, "remaining": 42, "reset_at": "2030-01-01T00:00:00Z"},
        },
    }

    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        data = await client.test_key()
        assert data["email"] == "a@b.c"
        assert client.pacer.remaining == 42

    server = run_client(body, httpx.Response(200, json=reply), path_prefix=prefix)
    assert str(server.calls[0][1].url) == "https://api.hitl.sh/v1/test"


def test_ids_are_escaped_as_one_path_segment() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await client.get_request("../loops/x?y=1")

    server = run_client(body, httpx.Response(200, json={"data": {"request": {"id": "x"}}}))
    assert server.calls[0][1].url.raw_path == b"/v1/api/requests/..%2Floops%2Fx%3Fy%3D1"
    assert "idempotency-key" not in server.calls[0][1].headers


@pytest.mark.parametrize(
    "reply",
    [
        {"data": {"request_id": "R1"}},
        {"data": {"id": "R1"}},
        {"data": {"request": {"id": "R1", "status": "pending"}}},
        {"id": "R1"},
    ],
)
def test_created_id_fallbacks(reply: dict[str, Any]) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert (await create(client)).request_id == "R1"

    run_client(body, httpx.Response(201, json=reply))


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, json={"error": False, "data": {}}),
        httpx.Response(200, json={"error": True, "msg": "No active members found in the loop"}),
        httpx.Response(201, content=b"<html>ok</html>"),
        httpx.Response(201, json=["not", "an", "object"]),
    ],
)
def test_2xx_without_id_or_with_error_true_is_permanent(response: httpx.Response) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlPermanentError) as err:
            await create(client)
        assert err.value.status in (200, 201)

    server = run_client(body, response)
    assert len(server.calls) == 1


def test_error_true_carries_hitls_msg() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlPermanentError) as err:
            await create(client)
        assert err.value.msg == "No active members found in the loop"

    run_client(
        body,
        httpx.Response(200, json={"error": True, "msg": "No active members found in the loop"}),
    )


def test_permanent_400_carries_msg_and_data_and_is_not_retried() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlPermanentError) as err:
            await create(client)
        assert err.value.status == 400
        assert err.value.msg == "priority must be one of: low, medium, high, critical"
        assert err.value.data == {"field": "priority"}
        assert not err.value.retriable

    server = run_client(
        body,
        error(400, "priority must be one of: low, medium, high, critical", {"field": "priority"}),
    )
    assert len(server.calls) == 1


def test_permanent_error_with_a_non_json_body_does_not_crash() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlPermanentError) as err:
            await client.get_request("r1")
        assert err.value.status == 404
        assert err.value.msg == "<html>nope</html>"

    run_client(body, httpx.Response(404, content=b"<html>nope</html>"))


def test_get_request_accepts_both_wrappers() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert (await client.get_request("a"))["status"] == "completed"
        assert (await client.get_request("b"))["status"] == "pending"

    run_client(
        body,
        httpx.Response(200, json={"data": {"request": {"id": "a", "status": "completed"}}}),
        httpx.Response(200, json={"data": {"id": "b", "status": "pending"}}),
    )


def test_list_requests_query_and_page() -> None:
    reply = {
        "data": {
            "requests": [{"id": "a"}, {"id": "b"}, "junk"],
            "count": 2,
            "total": 7,
            "has_more": True,
            "pagination": {"limit": 2, "offset": 0, "next_offset": 2},
        }
    }

    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        page = await client.list_requests(status="completed", limit=2)
        assert [r["id"] for r in page.requests] == ["a", "b"]
        assert (page.has_more, page.next_offset, page.total) == (True, 2, 7)

    server = run_client(body, httpx.Response(200, json=reply))
    url = server.calls[0][1].url
    assert url.path == "/v1/api/requests"
    assert dict(url.params) == {
        "limit": "2",
        "offset": "0",
        "sort": "created_at_desc",
        "status": "completed",
    }


def test_cancel_loops_and_webhooks_paths() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert (await client.cancel_request("r1"))["status"] == "cancelled"
        assert await client.list_loops() == [{"id": "l1"}]
        assert (await client.create_loop("n", "d", "i"))["id"] == "l2"
        assert (await client.register_webhook("https://x/h", ["request.completed"], "s"))[
            "id"
        ] == "w1"
        assert await client.list_webhooks() == [{"id": "w1"}]

    server = run_client(
        body,
        httpx.Response(200, json={"data": {"request_id": "r1", "status": "cancelled"}}),
        httpx.Response(200, json={"data": {"loops": [{"id": "l1"}], "count": 1}}),
        httpx.Response(201, json={"data": {"loop": {"id": "l2"}}}),
        httpx.Response(201, json={"data": {"id": "w1"}}),
        httpx.Response(200, json={"data": {"webhooks": [{"id": "w1"}]}}),
    )
    assert [(r.method, r.url.path) for _, r in server.calls] == [
        ("DELETE", "/v1/api/requests/r1"),
        ("GET", "/v1/api/loops"),
        ("POST", "/v1/api/loops"),
        ("POST", "/v1/api/webhooks"),
        ("GET", "/v1/api/webhooks"),
    ]


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 503])
def test_statuses_that_say_not_processed_are_retried_with_the_same_key(status: int) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert (await create(client, "key-7")).request_id

    server = run_client(
        body, error(status, "busy", **{"Retry-After": "1"}), error(status, "busy"), created()
    )
    assert len(server.calls) == 3
    assert {r.headers["idempotency-key"] for _, r in server.calls} == {"key-7"}


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_create_answered_5xx_is_ambiguous_and_never_repeated(status: int) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlAmbiguousError, match="looked up"):
            await create(client, "key-7")

    server = run_client(body, error(status, "busy"), created())
    assert len(server.calls) == 1


def test_a_refused_create_is_retried() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert (await create(client, "key-9")).request_id

    refused = httpx.ConnectError("connection refused")
    server = run_client(body, refused, refused, created())
    assert len(server.calls) == 3
    assert {r.headers["idempotency-key"] for _, r in server.calls} == {"key-9"}


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("connection reset"),
        httpx.ReadError("reset by peer"),
    ],
)
def test_a_create_that_may_have_left_is_ambiguous_and_never_repeated(exc: Exception) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlAmbiguousError):
            await create(client, "key-9")

    server = run_client(body, exc, created())
    assert len(server.calls) == 1


@pytest.mark.parametrize(
    "exc", [httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("reset")]
)
def test_reads_are_retried_after_transport_errors(exc: Exception) -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert await client.get_request("r1")

    server = run_client(body, exc, httpx.Response(200, json={"data": {"request": {"id": "r1"}}}))
    assert len(server.calls) == 2


def test_list_loop_requests_pages_newest_first_whatever_order_comes_back() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        got = await client.list_loop_requests("loop1", offset=100)
        assert [r["id"] for r in got] == ["b", "a"]

    page = {
        "data": {
            "loop_id": "loop1",
            "requests": [
                {"id": "a", "created_at": "2026-01-01T00:00:00Z"},
                {"id": "b", "created_at": "2026-01-01T00:00:01Z"},
                "not an object",
            ],
            "count": 3,
        }
    }
    server = run_client(body, httpx.Response(200, json=page))
    (call,) = server.calls
    assert call[1].url.path == "/v1/api/loops/loop1/requests"
    assert dict(call[1].url.params) == {"limit": "100", "offset": "100", "sort": "created_at_desc"}


def test_retry_after_seconds_is_honoured() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await create(client)

    server = run_client(body, error(503, "down", **{"Retry-After": "5"}), created())
    assert server.gaps()[0] >= 5


def test_retry_after_http_date_is_honoured() -> None:
    wall0 = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(wall0 + 7, UTC), usegmt=True)

    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await create(client)

    server = run_client(body, error(503, "down", **{"Retry-After": date}), created(), wall0=wall0)
    assert server.gaps()[0] >= 7


def test_429_with_reset_makes_no_call_before_the_reset() -> None:
    wall0 = 1_700_000_000.0
    limited = error(
        429,
        "API key request limit exceeded",
        {"usage_count": 100, "usage_limit": 100, "remaining": 0},
        **{
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(wall0 + 40)),
        },
    )

    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await create(client)

    server = run_client(body, limited, created(), wall0=wall0, backoff_max_seconds=60)
    assert server.times[1] >= 40


def test_429_reset_from_the_body_when_headers_are_missing() -> None:
    limited = error(
        429, "API key request limit exceeded", {"remaining": 0, "reset_at": "2023-11-14T22:13:50Z"}
    )

    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await create(client)

    server = run_client(body, limited, created(), wall0=1_700_000_000.0, backoff_max_seconds=60)
    assert server.times[1] >= 30


def test_retries_exhausted_raise_unavailable_with_retry_after() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlUnavailableError) as err:
            await create(client)
        assert err.value.status == 503
        assert err.value.msg == "bad gateway"
        assert err.value.retry_after is not None and err.value.retry_after >= 0
        assert err.value.retriable

    server = run_client(
        body, error(503, "bad gateway"), max_retries=2, circuit_failure_threshold=50
    )
    assert len(server.calls) == 3


def test_a_retry_that_would_pass_the_deadline_is_not_waited_for() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlUnavailableError) as err:
            await create(client, deadline=clock.monotonic() + 3)
        assert err.value.retry_after == pytest.approx(10)
        assert clock.monotonic() < 3

    server = run_client(body, error(503, "down", **{"Retry-After": "10"}), created())
    assert len(server.calls) == 1


def test_post_without_idempotency_key_is_not_replayed_after_a_5xx() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlUnavailableError):
            await client.create_loop("n", "d", "i")

    server = run_client(
        body, error(500, "Internal server error"), httpx.Response(201, json={"data": {"id": "l"}})
    )
    assert len(server.calls) == 1


def test_post_without_idempotency_key_is_replayed_after_refused_or_429() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        assert (await client.create_loop("n", "d", "i"))["id"] == "l"

    server = run_client(
        body,
        httpx.ConnectError("refused"),
        error(429, "limit", **{"Retry-After": "1"}),
        httpx.Response(201, json={"data": {"loop": {"id": "l"}}}),
    )
    assert len(server.calls) == 3


def test_a_caller_cancelled_mid_call_returns_its_permit() -> None:
    async def main(clock: Clock) -> None:
        async def hang(request: httpx.Request) -> httpx.Response:
            await clock.sleep(3600)
            return created()

        client = HitlClient(settings(), transport=httpx.MockTransport(hang), clock=clock)
        async with client:
            task = asyncio.create_task(create(client))
            await clock.sleep(1)
            assert client.pacer.in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.pacer.in_flight == 0

    run_virtual(main)


# --- the breaker and the shared barrier ---------------------------------------------------------


def test_outage_opens_the_circuit_then_one_probe_closes_it() -> None:
    """(c): a 20 s outage answering 503 Retry-After: 5, with 32 concurrent callers."""

    async def main(clock: Clock) -> None:
        calls: list[tuple[float, int]] = []

        async def server(request: httpx.Request) -> httpx.Response:
            now = clock.monotonic()
            await clock.sleep(0.02)
            status = 503 if now < 20 else 201
            calls.append((now, status))
            if status == 503:
                return error(503, "Service temporarily unavailable", **{"Retry-After": "5"})
            return created()

        client = HitlClient(
            settings(circuit_failure_threshold=3, circuit_open_seconds=15, max_retries=10),
            transport=httpx.MockTransport(server),
            rng=random.Random(1),
            clock=clock,
        )
        states: list[str] = []
        client.breaker.on_change(states.append)
        async with client:
            results = await asyncio.gather(
                *(create(client, f"k{i}") for i in range(32)), return_exceptions=True
            )
            assert all(isinstance(r, HitlUnavailableError) for r in results)
            assert client.breaker.state == "open"
            assert states == ["open"]
            # Fail fast while open: no call is made.
            before = len(calls)
            with pytest.raises(HitlUnavailableError) as err:
                await create(client)
            assert len(calls) == before
            assert err.value.retry_after is not None and err.value.retry_after > 0
            assert client.blocked_until() is not None
            await clock.sleep(err.value.retry_after)
            probes = await asyncio.gather(
                *(create(client, f"p{i}") for i in range(4)), return_exceptions=True
            )
            assert states == ["open", "half_open", "closed"]
            assert sum(1 for p in probes if isinstance(p, HitlUnavailableError)) == 3
            assert (await create(client, "after")).request_id

        failures = [t for t, s in calls if s == 503]
        assert len(failures) == 3  # threshold reached, then nobody called during the outage
        gaps = [b - a for a, b in itertools.pairwise(failures)]
        assert all(g >= 5 for g in gaps)  # each retry waited what it was told
        first_ok = next(t for t, s in calls if s == 201)
        assert first_ok >= failures[-1] + 15  # one probe after the open period

    run_virtual(main)


def test_retry_after_learned_by_one_caller_holds_all_callers() -> None:
    async def main(clock: Clock) -> None:
        starts: list[float] = []
        learned: list[float] = []

        async def server(request: httpx.Request) -> httpx.Response:
            starts.append(clock.monotonic())
            first_of_batch = len(starts) == 2
            await clock.sleep(0.1)
            if first_of_batch:
                learned.append(clock.monotonic() + 6)
                return error(503, "busy", **{"Retry-After": "6"})
            return created()

        async def staggered(i: int) -> None:
            await clock.sleep(i * 0.05)
            await create(client, f"k{i}")

        client = HitlClient(
            settings(circuit_failure_threshold=50),
            transport=httpx.MockTransport(server),
            clock=clock,
        )
        async with client:
            await create(client, "warm")  # leaves probe mode
            origin = clock.monotonic()
            await asyncio.gather(*(staggered(i) for i in range(10)))
        (not_before,) = learned
        after = [t for t in starts[1:] if t > not_before - 6]
        assert after and all(t >= not_before for t in after)
        assert len([t for t in starts if origin < t < not_before]) >= 1  # some were in flight

    run_virtual(main)


def test_429_does_not_open_the_circuit() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await create(client)
        assert client.breaker.state == "closed"

    run_client(
        body,
        error(429, "limit", **{"Retry-After": "1"}),
        error(429, "limit", **{"Retry-After": "1"}),
        created(),
        circuit_failure_threshold=1,
    )


def test_client_against_a_fixed_window_server_has_no_429_at_full_rate() -> None:
    """(a) end to end: 80 creates, 32 in flight, 20 calls per 10 s fixed window."""
    wall0 = 1_700_000_003.0

    async def main(clock: Clock) -> tuple[FixedWindowServer, float, set[str]]:
        window_server = FixedWindowServer(20, 10.0, clock)
        keys: set[str] = set()
        rng = random.Random(5)

        async def handler(request: httpx.Request) -> httpx.Response:
            keys.add(request.headers["idempotency-key"])
            await clock.sleep(rng.uniform(0.01, 0.1))
            status, headers = window_server.hit()
            await clock.sleep(rng.uniform(0.01, 0.2))
            if status == 429:
                return error(429, "API rate limit exceeded", None, **headers)
            return created(**headers)

        client = HitlClient(
            settings(rate_limit_calls=20, rate_limit_window_seconds=10, max_in_flight=32),
            transport=httpx.MockTransport(handler),
            clock=clock,
        )
        async with client:
            await asyncio.gather(*(create(client, f"k{i}") for i in range(80)))
        return window_server, clock.monotonic(), keys

    server, elapsed, keys = run_virtual(main, wall0=wall0)
    assert server.rejected == 0
    assert len(server.accepted) == 80 and len(keys) == 80
    assert 80 / elapsed >= 0.9 * 2.0


# --- secrets, lifecycle, transports -------------------------------------------------------------


def test_api_key_never_in_logs_errors_or_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []

    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        for _ in range(3):
            try:
                await create(client)
            except (HitlPermanentError, HitlUnavailableError) as exc:
                errors.append(exc)
        errors.append(RuntimeError(repr(client)))

    run_client(
        body,
        error(401, "Invalid API key"),
        error(503, "down"),
        httpx.ConnectError("refused"),
        max_retries=0,
    )
    assert len(errors) == 4
    texts = [caplog.text, repr(settings())]
    texts += [
        f"{e!s} {e!r} {e.args} {getattr(e, 'msg', '')} {getattr(e, 'data', '')}" for e in errors
    ]
    assert all(API_KEY not in t for t in texts)


def test_calls_before_start_fail_clearly_and_stop_is_idempotent() -> None:
    async def main(clock: Clock) -> None:
        client = HitlClient(
            settings(), transport=httpx.MockTransport(lambda r: created()), clock=clock
        )
        with pytest.raises(RuntimeError, match="start"):
            await create(client)
        await client.start()
        await client.stop()
        await client.stop()
        with pytest.raises(RuntimeError):
            await client.start()

    run_virtual(main)


def test_observer_sees_endpoint_labels_not_ids() -> None:
    seen: list[tuple[str, int | None]] = []
    limits: list[RateLimitInfo] = []

    class Observer:
        def on_call(self, endpoint: str, status: int | None, seconds: float) -> None:
            seen.append((endpoint, status))

        def on_rate_limit(self, info: RateLimitInfo) -> None:
            limits.append(info)

        def on_circuit(self, state: str) -> None:
            pass

    async def main(clock: Clock) -> None:
        client = HitlClient(
            settings(),
            transport=httpx.MockTransport(lambda r: created(**{"X-RateLimit-Remaining": "9"})),
            observer=Observer(),
            clock=clock,
        )
        async with client:
            await create(client)
            await client.get_request("65f1234567890abcdef12348")

    run_virtual(main)
    assert seen == [("create_request", 201), ("get_request", 201)]
    assert limits[0].remaining == 9


async def test_default_pool_is_httpx_with_env_proxies_and_settings_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    http = build_http(settings(max_in_flight=7, connect_timeout_seconds=2, read_timeout_seconds=9))
    async with http:
        assert http.timeout == httpx.Timeout(9, connect=2)
        assert http.follow_redirects is False
        assert "Bearer" in http.headers["Authorization"]
        proxied = http._transport_for_url(httpx.URL("https://api.hitl.sh/v1/test"))
        direct = http._transport_for_url(httpx.URL("https://internal.example/v1/test"))
        assert isinstance(proxied, AiohttpTransport) and isinstance(direct, AiohttpTransport)
        assert proxied.proxy is not None and str(proxied.proxy.url) == "http://127.0.0.1:3128"
        assert direct.proxy is None


def test_idempotency_key_with_line_breaks_is_refused_before_sending() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        with pytest.raises(HitlPermanentError, match="Idempotency-Key"):
            await create(client, key="e1\r\nX-Injected: 1")

    server = run_client(body, created())
    assert server.calls == []


def test_idempotency_key_with_non_ascii_text_goes_out_as_utf8() -> None:
    async def body(client: HitlClient, server: Recorder, clock: Clock) -> None:
        await create(client, key="evt-ü-🌍")

    server = run_client(body, created())
    ((_, request),) = server.calls
    assert dict(request.headers.raw)[b"Idempotency-Key"] == "evt-ü-🌍".encode()


async def test_the_client_keeps_and_sends_no_cookies() -> None:
    """HITL.sh sets none; parsing them per response was 12 % of a create's CPU."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(
            200,
            json={"error": False, "data": {"request_id": "r1"}},
            headers={"Set-Cookie": "session=abc; Path=/"},
        )

    async with HitlClient(
        HitlSettings(base_url="http://hitl.test/v1"), transport=httpx.MockTransport(handler)
    ) as client:
        await client.create_request("loop-1", {"x": 1}, idempotency_key="k1")
        await client.create_request("loop-1", {"x": 1}, idempotency_key="k2")
        assert len(client._http.cookies.jar) == 0  # type: ignore[union-attr]
    assert seen == [None, None]
