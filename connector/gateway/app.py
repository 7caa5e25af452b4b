"""The gateway's ASGI application: webhook receiver, health and readiness (design §5).

Stateless. A delivery is verified (signature and/or callback token), parsed, normalized, and
produced to ``hitl.callbacks`` keyed by ``request_id``; only when Kafka acknowledged it
(idempotent producer, acks=all) does the sender get its 2xx. Answers:

- 200 accepted (durable) or ignored (well-formed but not about a request);
- 400 invalid JSON or a malformed request event; 401 bad or missing signature / token;
- 404 unknown path; 405 wrong method; 408 body not in within its deadline (and the connection
  closed); 413 body over the limit; 415 not JSON;
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

from connector.hitl.payloads import Ignored, MalformedPayload, normalize_webhook
from connector.hitl.signing import SIGNATURE_HEADERS, SignatureCheck, decide, verify_signature
from connector.hitl.tokens import read_callback_token
from connector.metrics import Metrics

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

    def ready(self) -> bool: ...


class SinkUnavailable(Exception):
    """Kafka did not acknowledge the record; answer 503 so the sender retries."""


class _SlowBody(Exception):
    """The body did not arrive within ``body_timeout_seconds``: 408, and the task is freed."""


class GatewayStats:
    """Outcome counts and ack times, kept only in Prometheus (tests read the registry)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._children: dict[str, Any] = {}

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            child = self._children.get(outcome)
            if child is None:  # the label lookup once per outcome, not per webhook
                child = self._children[outcome] = self.metrics.webhooks_received.labels(outcome)
            child.inc()

    def acked(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.webhook_ack.observe(seconds)


@dataclass(frozen=True)
class GatewayConfig:
    signature_mode: str = "if-present"
    secrets: tuple[bytes, ...] = ()
    token_secret: bytes | None = None
    max_body_bytes: int = 1024 * 1024
    body_timeout_seconds: float = 10.0


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
        self.stats = GatewayStats(metrics)
        self._metrics_app = make_asgi_app(metrics.registry) if metrics is not None else None
        self._ready = ready or (sink.ready if sink is not None else (lambda: True))

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
                self.stats.count("slow_body")
                close = [(b"connection", b"close")]
                await _respond(send, 408, b'{"error":"body not received in time"}', close)
                return
            await _respond(send, status, body, extra)
            if status == 200:
                self.stats.acked(time.perf_counter() - start)
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
            await self._metrics_app(scope, receive, send)
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
        raw_ctype = b"application/json"
        content_length: bytes | None = None
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.lower()
            if name == b"content-type":
                raw_ctype = raw_value
            elif name == b"content-length":
                content_length = raw_value
            elif name in _SIGNATURE_HEADERS:
                signature_headers[name.decode("latin-1")] = raw_value.decode("latin-1")
        ctype = raw_ctype.decode("latin-1").split(";", 1)[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json"):
            self.stats.count("unsupported_media_type")
            return (*_json_body(415, {"error": "content-type must be application/json"}), None)
        token_event_id: str | None = None
        if path.startswith(CALLBACK_PREFIX):
            token = path[len(CALLBACK_PREFIX) :]
            secret = self.config.token_secret
            token_event_id = read_callback_token(token, secret) if secret else None
            if token_event_id is None:
                self.stats.count("bad_token")
                return (*_json_body(401, {"error": "invalid callback token"}), None)
        body = await self._read_body(receive, content_length)
        if body is None:
            self.stats.count("too_large")
            return (*_json_body(413, {"error": "body too large"}), None)
        check = verify_signature(body, signature_headers, self.config.secrets)
        accepted = decide(check, self.config.signature_mode)  # type: ignore[arg-type]
        if token_event_id is not None and check is SignatureCheck.MISSING:
            # HITL.sh does not sign callback_url deliveries; their URL token authenticates them.
            accepted = True
        if not accepted:
            self.stats.count("bad_signature")
            what = "missing" if check is SignatureCheck.MISSING else "invalid"
            return (*_json_body(401, {"error": f"{what} signature"}), None)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.stats.count("malformed")
            return (*_json_body(400, {"error": "invalid JSON"}), None)
        try:
            normalized = normalize_webhook(payload)
        except MalformedPayload as exc:
            self.stats.count("malformed")
            return (*_json_body(400, {"error": str(exc)[:200]}), None)
        if isinstance(normalized, Ignored):
            self.stats.count("ignored")
            return (*_json_body(200, {"status": "ignored", "reason": normalized.reason}), None)
        assert self.sink is not None
        try:
            await self.sink.publish(
                normalized.request_id, normalized.to_json(), payload, token_event_id
            )
        except SinkUnavailable as exc:
            self.stats.count("unavailable")
            log.warning("webhook not accepted, Kafka unavailable: %s", exc)
            retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
            return (*_json_body(503, {"error": "temporarily unavailable"}), retry)
        self.stats.count("accepted")
        return 200, _ACCEPTED, None
