"""The gateway's ASGI application: webhook receiver, health and readiness (design §5).

Stateless. A delivery is authenticated (signature on ``/webhooks/hitl``, the URL token on
``/webhooks/hitl/cb/<token>``), parsed, normalized, and produced to ``hitl.callbacks`` keyed
by ``request_id``; only when Kafka acknowledged it (idempotent producer, acks=all) does the
sender get its 2xx. An authenticated delivery is never dropped: one that cannot be parsed, names
an unknown event or an unknown status is kept with its raw bytes and a reason on the unmatched
topic (``sink.publish_unusable``) and answered 200. Answers:

- 200 accepted (durable), kept (durable, unusable) or ignored (a documented non-request event);
- 401 bad or missing signature / token; 404 unknown path; 405 wrong method; 408 body not in
  within its deadline (and the connection closed); 413 body over the limit (no 415: an
  authenticated body that is not JSON is kept like any unusable one);
- 503 + ``Retry-After`` when Kafka cannot take the record, so HITL.sh retries.

Never 500 on input: every parse path is guarded. A plain ASGI app (no framework) because this
is the hot path of the webhook benchmark.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from prometheus_client import make_asgi_app

from connector.config import GatewaySettings
from connector.errors import ConfigError
from connector.hitl.payloads import Ignored, MalformedPayload, normalize_webhook, request_id_hint
from connector.hitl.signing import SIGNATURE_HEADERS, SignatureCheck, decide, verify_signature
from connector.hitl.tokens import read_callback_token
from connector.metrics import Metrics
from connector.serving import HttpServer

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PATH = "/webhooks/hitl"
CALLBACK_PREFIX = "/webhooks/hitl/cb/"
RETRY_AFTER_SECONDS = 5


class CallbackSink(Protocol):
    """Where accepted callbacks go; ``publish`` returns once the record is durable."""

    async def publish(
        self, request_id: str, callback: dict[str, Any], payload: Any, token_event_id: str | None
    ) -> None: ...

    async def publish_unusable(
        self, raw: bytes, unusable: Unusable, *, request_id: str | None, token_event_id: str | None
    ) -> None: ...

    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Unusable:
    """Why an authenticated delivery could not be used: a bounded ``reason`` and a detail."""

    reason: str  # invalid_json | malformed | unknown_event | unknown_status
    detail: str
    via: str  # webhook | callback


class SinkUnavailable(Exception):
    """Kafka did not acknowledge the record; answer 503 so the sender retries."""


class _SlowBody(Exception):
    """The body did not arrive within ``body_timeout_seconds``: 408, and the task is freed."""


@dataclass(frozen=True)
class GatewayConfig:
    """``token_secrets``: the first signs callback URLs, each verifies (rotation)."""

    signature_mode: str = "required"
    secrets: tuple[bytes, ...] = ()
    token_secrets: tuple[bytes, ...] = ()
    max_body_bytes: int = 1024 * 1024
    body_timeout_seconds: float = 10.0
    callback_signature: str = "token"


def check_gateway_config(config: GatewayConfig) -> None:
    """Refuse a gateway that would accept decisions nothing authenticates; warn about the
    modes that accept unsigned deliveries. Raises ``ConfigError`` naming the settings."""
    if not any(config.secrets) and not any(config.token_secrets):
        raise ConfigError(
            "the gateway has no webhook secret and no callback token secret, so nothing would "
            "authenticate the decisions it accepts: set HITL_WEBHOOK_SECRET (gateway.secrets, "
            "the secret HITL.sh signs webhooks with) and/or HITL_CALLBACK_TOKEN_SECRET "
            "(gateway.token_secrets, signs the per-request callback URLs)"
        )
    if config.signature_mode == "accept-unsigned":
        log.warning(
            "gateway.signature=accept-unsigned: /webhooks/hitl accepts deliveries without a "
            "signature, so anyone who can reach it can post a decision; use required"
        )
    elif config.signature_mode == "accept-any":
        log.warning(
            "gateway.signature=accept-any: /webhooks/hitl checks no signature at all, so anyone "
            "who can reach it can post a decision; use required"
        )
    elif not any(config.secrets):
        log.info(
            "no webhook secret (HITL_WEBHOOK_SECRET): /webhooks/hitl refuses every delivery; "
            "decisions arrive through callback URLs and polling"
        )


_SIGNATURE_HEADERS = frozenset(name.encode() for name in SIGNATURE_HEADERS)
_ACCEPTED = b'{"status":"accepted"}'
_ACCEPTED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_ACCEPTED)).encode()),
]


def _json_body(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, orjson.dumps(body)


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    if body is _ACCEPTED and not extra:
        headers = _ACCEPTED_HEADERS
    else:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if extra:
            headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GatewayApp:
    """ASGI callable; one instance per process."""

    def __init__(
        self,
        config: GatewayConfig,
        sink: CallbackSink | None,
        *,
        metrics: Metrics | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """With ``sink`` None only health, readiness and metrics are served (other roles)."""
        self.config = config
        self.sink = sink
        self.metrics = metrics
        self._outcomes: dict[str, Any] = {}  # outcome → its counter, looked up once each
        self._metrics_app = make_asgi_app(metrics.registry) if metrics is not None else None
        self._ready = ready or (sink.ready if sink is not None else (lambda: True))

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            counter = self._outcomes.get(outcome)
            if counter is None:
                counter = self._outcomes[outcome] = self.metrics.webhooks_received.labels(outcome)
            counter.inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if self.sink is not None and (path == WEBHOOK_PATH or path.startswith(CALLBACK_PREFIX)):
            if method != "POST":
                await _respond(send, 405, b'{"error":"method not allowed"}', [(b"allow", b"POST")])
                return
            start = time.perf_counter()
            try:
                status, body, extra = await self._webhook(scope, receive, path)
            except _SlowBody:
                self._count("slow_body")
                close = [(b"connection", b"close")]
                await _respond(send, 408, b'{"error":"body not received in time"}', close)
                return
            await _respond(send, status, body, extra)
            if status == 200 and self.metrics is not None:
                self.metrics.webhook_ack.observe(time.perf_counter() - start)
            return
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b'{"error":"method not allowed"}', [(b"allow", b"GET")])
            return
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}')
        elif path == "/readyz":
            ok = self._ready()
            await _respond(
                send, 200 if ok else 503, b'{"ready":%s}' % (b"true" if ok else b"false")
            )
        elif path == "/metrics" and self._metrics_app is not None:
            await self._metrics_app(_metrics_scope(scope), receive, send)
        else:
            await _respond(send, 404, b'{"error":"not found"}')

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes | None:
        """The raw body, or None when it exceeds the limit (checked before and while reading).

        Raises ``_SlowBody`` past ``body_timeout_seconds``: a client that announces a body and
        trickles it must not hold this task (and a concurrency slot) for longer.
        """
        limit = self.config.max_body_bytes
        if content_length is not None:
            try:
                if int(content_length) > limit:
                    return None
            except ValueError:
                return None
        try:
            async with asyncio.timeout(self.config.body_timeout_seconds):
                return await self._receive_body(receive, limit)
        except TimeoutError:
            raise _SlowBody from None

    @staticmethod
    async def _receive_body(receive: Receive, limit: int) -> bytes | None:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body  # the usual case: the whole body in one message
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _webhook(
        self, scope: Scope, receive: Receive, path: str
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]] | None]:
        # One pass over the raw headers (the server gives lowercase names), keeping only what
        # is used: the signature headers, content type and length (the last one of each wins).
        signature_headers: dict[str, str] = {}
        raw_ctype = b""
        content_length: bytes | None = None
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.lower()
            if name == b"content-type":
                raw_ctype = raw_value
            elif name == b"content-length":
                content_length = raw_value
            elif name in _SIGNATURE_HEADERS:
                signature_headers[name.decode("latin-1")] = raw_value.decode("latin-1")
        token_event_id: str | None = None
        if path.startswith(CALLBACK_PREFIX):
            token = path[len(CALLBACK_PREFIX) :]
            token_event_id = read_callback_token(token, self.config.token_secrets)
            if token_event_id is None:
                self._count("bad_token")
                return (*_json_body(401, {"error": "invalid callback token"}), None)
        # No 415: the content type is not authenticated, and an authenticated body is judged
        # by what it is (a body that is not JSON is kept with its type in the detail).
        ctype = raw_ctype.decode("latin-1").split(";", 1)[0].strip().lower()[:80]
        if not ctype.isprintable():
            ctype = repr(ctype)[1:-1]
        body = await self._read_body(receive, content_length)
        if body is None:
            self._count("too_large")
            return (*_json_body(413, {"error": "body too large"}), None)
        check = verify_signature(body, signature_headers, self.config.secrets)
        refused = self._refused(check, token_event_id)
        if refused is not None:
            return refused
        via = "callback" if token_event_id is not None else "webhook"
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            detail = f"not JSON ({ctype or 'no content type'}): {exc}"
            kept = Unusable("invalid_json", detail, via)
            return await self._keep(body, kept, None, token_event_id)
        try:
            normalized = normalize_webhook(payload)
        except MalformedPayload as exc:
            hint = request_id_hint(payload)
            kept = Unusable(exc.reason, str(exc)[:200], via)
            return await self._keep(body, kept, hint, token_event_id)
        if isinstance(normalized, Ignored):
            self._count("ignored")
            return (*_json_body(200, {"status": "ignored", "reason": normalized.reason}), None)
        assert self.sink is not None
        try:
            await self.sink.publish(
                normalized.request_id, normalized.to_json(), payload, token_event_id
            )
        except SinkUnavailable as exc:
            return self._unavailable(exc)
        self._count("accepted")
        return 200, _ACCEPTED, None

    def _refused(
        self, check: SignatureCheck, token_event_id: str | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]] | None] | None:
        """The 401 for a delivery that is not authenticated, or None when it is."""
        if token_event_id is None:
            accepted = decide(check, self.config.signature_mode)  # type: ignore[arg-type]
        elif self.config.callback_signature == "token-and-signature":
            accepted = check is SignatureCheck.VALID
        else:
            # The token authenticates. A signature we cannot check (no secret, or none of ours
            # matches: HITL.sh signs with a secret we may not have) is counted, not refused.
            accepted = True
            if check is SignatureCheck.INVALID:
                self._count("unverified_signature")
                log.warning(
                    "callback delivery with a valid token carries a signature no configured "
                    "webhook secret verifies; accepted on the token",
                    extra={"event_id": token_event_id},
                )
        if accepted:
            return None
        self._count("bad_signature")
        what = "missing" if check is SignatureCheck.MISSING else "invalid"
        return (*_json_body(401, {"error": f"{what} signature"}), None)

    async def _keep(
        self, raw: bytes, unusable: Unusable, request_id: str | None, token_event_id: str | None
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]] | None]:
        """Make an authenticated but unusable delivery durable with its reason; then 200."""
        assert self.sink is not None
        try:
            await self.sink.publish_unusable(
                raw, unusable, request_id=request_id, token_event_id=token_event_id
            )
        except SinkUnavailable as exc:
            return self._unavailable(exc)
        self._count(f"kept_{unusable.reason}")
        log.warning(
            "authenticated webhook kept on the unmatched topic: %s",
            unusable.reason,
            extra={"reason": unusable.reason, "request_id": request_id, "via": unusable.via},
        )
        return (*_json_body(200, {"status": "kept", "reason": unusable.reason}), None)

    def _unavailable(self, exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]] | None]:
        self._count("unavailable")
        log.warning("webhook not accepted, Kafka unavailable: %s", exc)
        retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
        return (*_json_body(503, {"error": "temporarily unavailable"}), retry)


def gateway_server(app: GatewayApp, settings: GatewaySettings) -> HttpServer:
    """``app`` served on ``settings.host:port`` with the limits of ``settings``."""
    return HttpServer(
        app,
        settings.host,
        settings.port,
        name="gateway",
        limit_concurrency=settings.limit_concurrency,
        keep_alive_seconds=settings.keep_alive_seconds,
        head_timeout=settings.header_timeout_seconds,
        max_head_bytes=settings.max_header_bytes,
    )


def _metrics_scope(scope: Scope) -> Scope:
    """The request as prometheus_client's ASGI app may see it: that app decodes the query
    string and every header as UTF-8 and fails (a 500) on other bytes, so it gets only the
    headers it reads (``accept``, ``accept-encoding``) and only ASCII values of them."""
    query: bytes = scope.get("query_string", b"")
    headers = [
        (name, value)
        for name, value in scope.get("headers", ())
        if name.lower() in (b"accept", b"accept-encoding") and value.isascii()
    ]
    return {**scope, "headers": headers, "query_string": query if query.isascii() else b""}
