"""The pooled HITL.sh HTTP client: one ``httpx.AsyncClient`` per process, paced and retried.

Owns: URLs and headers (Bearer key, ``Idempotency-Key`` on creates), the attempt loop
(breaker → pacer → send → learn rate-limit headers → classify → back off), mapping answers
and transport errors onto ``connector.errors``, and the transport choice (``build_transport``).
Not here: shaping or validating payloads (callers send documented fields only), pausing Kafka
(callers listen to ``breaker.on_change`` and use ``pacer.blocked_until()``), metrics (plug in
an ``ApiObserver``). The API key never appears in logs, exception messages or ``repr``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from connector.config import HitlSettings
from connector.errors import HitlPermanentError, HitlUnavailableError
from connector.hitl.pacing import ApiPacer, CircuitBreaker, CircuitState, Clock
from connector.hitl.retry import (
    RateLimitInfo,
    full_jitter_backoff,
    is_retriable_status,
    parse_rate_limit,
    parse_retry_after,
)

log = logging.getLogger(__name__)

# Docs' client samples wait 60 s on a 429 that says nothing about when to come back.
_DEFAULT_429_WAIT = 60.0
_MAX_MSG_CHARS = 500


class ApiObserver(Protocol):
    """Metrics hook. ``endpoint`` is a fixed label such as ``create_request``, never an id."""

    def on_call(self, endpoint: str, status: int | None, seconds: float) -> None: ...
    def on_rate_limit(self, info: RateLimitInfo) -> None: ...
    def on_circuit(self, state: CircuitState) -> None: ...


class NullObserver:
    def on_call(self, endpoint: str, status: int | None, seconds: float) -> None:
        return None

    def on_rate_limit(self, info: RateLimitInfo) -> None:
        return None

    def on_circuit(self, state: CircuitState) -> None:
        return None


@dataclass(slots=True)
class CreatedRequest:
    request_id: str
    status: str | None
    timeout_at: str | None
    polling_url: str | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestPage:
    requests: list[dict[str, Any]]
    has_more: bool
    next_offset: int | None
    total: int | None


def build_transport(
    kind: Literal["aiohttp", "httpx"], max_connections: int
) -> httpx.AsyncBaseTransport:
    """The connection pool; ``max_connections`` should equal the pacer's ``max_in_flight``."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if kind == "aiohttp":
        return AiohttpTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


def _user_agent() -> str:
    try:
        return f"hitl-kafka-connector/{version('hitl-kafka-connector')}"
    except PackageNotFoundError:
        return "hitl-kafka-connector/0+unknown"


def _seg(value: str) -> str:
    """An id as one path segment: ids come from records, so never let them add path parts."""
    return quote(str(value), safe="")


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None


def _msg(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict):
        for key in ("msg", "message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:_MAX_MSG_CHARS]
    text = response.content[:_MAX_MSG_CHARS].decode("utf-8", errors="replace").strip()
    return text or response.reason_phrase or f"HTTP {response.status_code}"


def _data(body: dict[str, Any]) -> Any:
    return body.get("data")


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _pick(body: dict[str, Any], key: str) -> Any:
    """``data.<key>`` when present, else ``data`` itself (the docs disagree on the wrapper)."""
    data = _data(body)
    if isinstance(data, dict) and key in data:
        return data[key]
    return data


def _created_id(body: dict[str, Any]) -> str | None:
    data = _as_dict(_data(body))
    for candidate in (
        data.get("request_id"),
        data.get("id"),
        _as_dict(data.get("request")).get("id"),
        body.get("id"),
    ):
        if isinstance(candidate, str) and candidate:
            return candidate
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return str(candidate)
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class HitlClient:
    """Every HITL.sh call the connector makes. ``start()`` before use; ``stop()`` is idempotent.

    All methods take ``deadline`` (monotonic seconds): no attempt starts, and no wait for a
    permit or a retry extends, past it; ``HitlUnavailableError.retry_after`` says when to
    come back. A transport passed in is owned (closed by ``stop()``) from then on.
    """

    def __init__(
        self,
        settings: HitlSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        pacer: ApiPacer | None = None,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
        observer: ApiObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock or (pacer.clock if pacer is not None else Clock())
        self.pacer = pacer or ApiPacer.from_settings(settings, clock=self._clock)
        self.breaker = breaker or CircuitBreaker.from_settings(settings, clock=self._clock)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._observer: ApiObserver = observer or NullObserver()
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._stopped = False
        self._base = settings.base_url.rstrip("/") + "/"
        self.breaker.on_change(self._observer.on_circuit)

    def __repr__(self) -> str:
        return f"HitlClient(base_url={self._settings.base_url!r}, started={self._http is not None})"

    def blocked_until(self) -> float | None:
        """Monotonic time before which no call can start (budget, Retry-After, open circuit)."""
        times = [t for t in (self.pacer.blocked_until(), self.breaker.open_until) if t is not None]
        return max(times) if times else None

    async def start(self) -> None:
        if self._http is not None:
            return
        if self._stopped:
            raise RuntimeError("HitlClient was stopped; build a new one")
        s = self._settings
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _user_agent(),
        }
        if s.api_key is not None:
            headers["Authorization"] = f"Bearer {s.api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            transport=self._transport or build_transport(s.transport, s.max_in_flight),
            headers=headers,
            timeout=httpx.Timeout(
                connect=s.connect_timeout_seconds,
                read=s.read_timeout_seconds,
                write=s.read_timeout_seconds,
                pool=s.read_timeout_seconds,
            ),
            follow_redirects=False,
        )

    async def stop(self) -> None:
        self._stopped = True
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        elif self._transport is not None:
            await self._transport.aclose()
        self._transport = None

    async def __aenter__(self) -> HitlClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- endpoints -------------------------------------------------------------------------

    async def create_request(
        self,
        loop_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        deadline: float | None = None,
    ) -> CreatedRequest:
        status, reply = await self._call(
            "POST",
            f"loops/{_seg(loop_id)}/requests",
            endpoint="create_request",
            json_body=body,
            idempotency_key=idempotency_key,
            deadline=deadline,
        )
        request_id = _created_id(reply)
        if request_id is None:
            raise HitlPermanentError(
                f"HITL.sh create_request answered HTTP {status} without a request id; "
                "check hitl.base_url and hitl.path_prefix",
                status=status,
                msg=_opt_str(reply.get("msg")),
                data=_data(reply),
            )
        data = _as_dict(_data(reply))
        return CreatedRequest(
            request_id=request_id,
            status=_opt_str(data.get("status")),
            timeout_at=_opt_str(data.get("timeout_at")),
            polling_url=_opt_str(data.get("polling_url")),
            raw=reply,
        )

    async def get_request(
        self, request_id: str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        status, reply = await self._call(
            "GET", f"requests/{_seg(request_id)}", endpoint="get_request", deadline=deadline
        )
        return self._expect_dict(_pick(reply, "request"), "get_request", status, reply)

    async def list_requests(
        self,
        *,
        status: str | None = None,
        loop_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "created_at_desc",
        deadline: float | None = None,
    ) -> RequestPage:
        params: dict[str, str | int] = {"limit": limit, "offset": offset, "sort": sort}
        if status is not None:
            params["status"] = status
        if loop_id is not None:
            params["loop_id"] = loop_id
        _, reply = await self._call(
            "GET", "requests", endpoint="list_requests", params=params, deadline=deadline
        )
        data = _data(reply)
        page = _as_dict(data)
        items = data if isinstance(data, list) else page.get("requests")
        requests = [r for r in items if isinstance(r, dict)] if isinstance(items, list) else []
        next_offset = _opt_int(_as_dict(page.get("pagination")).get("next_offset"))
        has_more = bool(page.get("has_more"))
        if has_more and next_offset is None:
            next_offset = offset + len(requests)
        return RequestPage(requests, has_more, next_offset, _opt_int(page.get("total")))

    async def cancel_request(
        self, request_id: str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        _, reply = await self._call(
            "DELETE", f"requests/{_seg(request_id)}", endpoint="cancel_request", deadline=deadline
        )
        return _as_dict(_data(reply))

    async def test_key(self, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /test`` (never prefixed): key status, permissions and the rate-limit budget."""
        status, reply = await self._call(
            "GET", "test", endpoint="test_key", prefixed=False, deadline=deadline
        )
        return self._expect_dict(_data(reply), "test_key", status, reply)

    async def list_loops(self, *, deadline: float | None = None) -> list[dict[str, Any]]:
        _, reply = await self._call("GET", "loops", endpoint="list_loops", deadline=deadline)
        items = _pick(reply, "loops")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def create_loop(
        self, name: str, description: str, icon: str, *, deadline: float | None = None
    ) -> dict[str, Any]:
        status, reply = await self._call(
            "POST",
            "loops",
            endpoint="create_loop",
            json_body={"name": name, "description": description, "icon": icon},
            deadline=deadline,
        )
        return self._expect_dict(_pick(reply, "loop"), "create_loop", status, reply)

    async def register_webhook(
        self,
        url: str,
        events: list[str],
        secret: str,
        loop_id: str | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "events": events, "secret": secret}
        if loop_id is not None:
            body["loop_id"] = loop_id
        status, reply = await self._call(
            "POST", "webhooks", endpoint="register_webhook", json_body=body, deadline=deadline
        )
        return self._expect_dict(_pick(reply, "webhook"), "register_webhook", status, reply)

    async def list_webhooks(self, *, deadline: float | None = None) -> list[dict[str, Any]]:
        _, reply = await self._call("GET", "webhooks", endpoint="list_webhooks", deadline=deadline)
        items = _pick(reply, "webhooks")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    @staticmethod
    def _expect_dict(
        value: Any, endpoint: str, status: int, reply: dict[str, Any]
    ) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        raise HitlPermanentError(
            f"HITL.sh {endpoint} answered HTTP {status} without the expected object",
            status=status,
            msg=_opt_str(reply.get("msg")),
            data=_data(reply),
        )

    # --- the attempt loop ------------------------------------------------------------------

    def _url(self, path: str, prefixed: bool) -> str:
        return self._base + (self._settings.path_prefix if prefixed else "") + path

    async def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        prefixed: bool = True,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        http = self._http
        if http is None:
            raise RuntimeError("HitlClient.start() has not been called (or stop() has)")
        try:
            content = orjson.dumps(json_body) if json_body is not None else None
        except TypeError as exc:
            raise HitlPermanentError(f"HITL.sh {endpoint}: body is not JSON ({exc})") from None
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        url = self._url(path, prefixed)
        # A POST without an idempotency key is repeated only when it surely was not processed.
        replay_safe = method != "POST" or idempotency_key is not None
        s, clock, pacer, breaker = self._settings, self._clock, self.pacer, self.breaker
        attempt = 0
        while True:
            breaker.check()  # fail fast while open, before waiting for a permit
            if not await pacer.acquire(deadline):
                blocked = pacer.blocked_until()
                wait = None if blocked is None else max(0.0, blocked - clock.monotonic())
                raise HitlUnavailableError(
                    f"HITL.sh {endpoint}: no call budget before the deadline; pause input"
                    + ("" if wait is None else f" and retry after {wait:.1f}s"),
                    retry_after=wait,
                )
            try:
                probe = breaker.before_call()  # the breaker may have opened while we waited
            except HitlUnavailableError:
                pacer.release(responded=False, sent=False)
                raise
            started = clock.monotonic()
            try:
                response = await http.request(
                    method, url, content=content, params=params, headers=headers
                )
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
                pacer.release(responded=False, sent=False)
                breaker.abandon(probe)
                self._observer.on_call(endpoint, None, clock.monotonic() - started)
                raise HitlPermanentError(
                    f"HITL.sh {endpoint}: cannot send ({type(exc).__name__}); check hitl.base_url"
                ) from None
            except httpx.RequestError as exc:
                # Connect refused/reset, read timeout, bad encoding. After a read timeout the
                # server may have acted on it: retrying with the same Idempotency-Key is the
                # only safe way to find out.
                now = clock.monotonic()
                self._observer.on_call(endpoint, None, now - started)
                pacer.release(responded=False, failed=True)
                breaker.record_failure()
                attempt += 1
                unsent = isinstance(exc, httpx.ConnectError)
                what = f"{type(exc).__name__}: {str(exc)[:200]}"
                delay = full_jitter_backoff(
                    attempt - 1, s.backoff_base_seconds, s.backoff_max_seconds, self._rng
                )
                await self._retry_or_raise(
                    endpoint, attempt, what, delay, deadline, replay_safe or unsent, None, None
                )
                continue
            except BaseException:
                pacer.release(responded=False)  # cancelled mid-call: it may have been sent
                breaker.abandon(probe)
                raise
            status = response.status_code
            self._observer.on_call(endpoint, status, clock.monotonic() - started)
            reply = _json(response.content)
            now, wall = clock.monotonic(), clock.wall()
            info = parse_rate_limit(
                response.headers, wall, reply if status == 429 or endpoint == "test_key" else None
            )
            if info is not None:
                self._observer.on_rate_limit(info)
            if 200 <= status < 300:
                pacer.release(info)
                breaker.record_success()
                if not isinstance(reply, dict):
                    raise HitlPermanentError(
                        f"HITL.sh {endpoint} answered HTTP {status} with a body that is not a "
                        "JSON object; check hitl.base_url",
                        status=status,
                        msg=_msg(reply, response),
                    )
                if reply.get("error") is True:
                    msg = _msg(reply, response)
                    raise HitlPermanentError(
                        f"HITL.sh {endpoint} answered HTTP {status} with error: {msg}",
                        status=status,
                        msg=msg,
                        data=_data(reply),
                    )
                return status, reply
            msg = _msg(reply, response)
            data = _data(reply) if isinstance(reply, dict) else None
            if not is_retriable_status(status):
                pacer.release(info)
                breaker.record_success()  # it answered, so it is up; the request is wrong
                raise HitlPermanentError(
                    f"HITL.sh rejected {endpoint}: HTTP {status}: {msg} (retrying will not help)",
                    status=status,
                    msg=msg,
                    data=data,
                )
            retry_at = self._retry_at(status, response.headers, info, now, wall)
            # The barrier is shared: when one caller learns "not before T", all of them wait.
            pacer.release(info, retry_at=retry_at, failed=status != 429)
            if status == 429:
                breaker.record_success()  # rate limited is not an outage
            else:
                breaker.record_failure(None if retry_at is None else retry_at - now)
            attempt += 1
            delay = full_jitter_backoff(
                attempt - 1, s.backoff_base_seconds, s.backoff_max_seconds, self._rng
            )
            if retry_at is not None:
                delay = max(delay, retry_at - now)
            await self._retry_or_raise(
                endpoint,
                attempt,
                f"HTTP {status}: {msg}",
                delay,
                deadline,
                replay_safe or status == 429,
                status,
                (msg, data),
            )

    def _retry_at(
        self,
        status: int,
        headers: httpx.Headers,
        info: RateLimitInfo | None,
        now: float,
        wall: float,
    ) -> float | None:
        """Monotonic "not before" from Retry-After, else (429 only) the window reset."""
        after = parse_retry_after(headers.get("retry-after"), wall)
        if after is not None:
            return now + after
        if status != 429:
            return None
        if info is not None and info.reset_at is not None:
            return now + max(0.0, info.reset_at - wall)
        return now + min(_DEFAULT_429_WAIT, self._settings.backoff_max_seconds)

    async def _retry_or_raise(
        self,
        endpoint: str,
        attempt: int,
        what: str,
        delay: float,
        deadline: float | None,
        retriable: bool,
        status: int | None,
        detail: tuple[str, Any] | None,
    ) -> None:
        """Sleep ``delay`` before attempt ``attempt + 1``, or give up with the reason."""
        now = self._clock.monotonic()
        if (
            not retriable
            or attempt > self._settings.max_retries
            or (deadline is not None and now + delay > deadline)
        ):
            msg, data = detail if detail is not None else (what, None)
            raise HitlUnavailableError(
                f"HITL.sh {endpoint} failed after {attempt} attempt(s), last: {what}; pause "
                f"input and retry after {delay:.1f}s",
                status=status,
                msg=msg,
                data=data,
                retry_after=delay,
            )
        log.info(
            "HITL %s attempt %d failed (%s); retrying in %.2fs", endpoint, attempt, what, delay
        )
        await self._clock.sleep(delay)
