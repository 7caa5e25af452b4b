"""Webhook delivery: targets, faults, a bounded pool of senders, retries on the documented schedule.

``emit(event, record, loop)`` sends ``event`` to every webhook registered by the request's API
key whose ``events`` match (``"*"``, ``"request.*"``, exact names, ``"loop.<id>.*"``,
``"!pattern"`` excludes) and whose ``loop_id`` (if any) is the request's, plus — for terminal
events only (hitl-api §4.1) — the request's ``callback_url``. One body per event (payload
style from the options), signed per target (its own secret; ``webhook_secret`` for callbacks).

Per delivery (target), before the first attempt, the faults are drawn: drop (never sent),
duplicate (a second independent copy), reorder (held until the next delivery to the same URL
has been attempted, at most ``REORDER_HOLD_SECONDS``), extra random delay.

Attempts: 2xx = delivered; 5xx, 408, 429, connection errors and timeouts are retried after
``RETRY_SCHEDULE_SECONDS[n] * webhook_retry_scale`` (8 attempts in all, then gave up); any
other status is final (``rejected``). Retries and delays go through a ``Scheduler``; senders
never sleep. ``clear()`` (admin reset) forgets queued, held and scheduled deliveries; answers
to attempts already in flight are then ignored.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from hitl_sandbox.options import SandboxOptions
from hitl_sandbox.payloads import TERMINAL_EVENTS, build_payload, signature_headers
from hitl_sandbox.scheduler import Scheduler
from hitl_sandbox.state import LoopRecord, RequestRecord, SandboxState

log = logging.getLogger(__name__)

# Immediately, then 15 s, 1 min, 5 min, 30 min, 2 h, 12 h, 24 h (hitl-api §4.5).
RETRY_SCHEDULE_SECONDS = (0, 15, 60, 300, 1800, 7200, 43200, 86400)
REORDER_HOLD_SECONDS = 1.0
RETRIABLE_4XX = frozenset({408, 429})


def event_matches(patterns: Iterable[str], event: str, loop_id: str) -> bool:
    """Whether a webhook subscribed to ``patterns`` gets ``event`` of a request in ``loop_id``."""
    hit = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        name = pattern[1:] if negated else pattern
        if _matches(name, event, loop_id):
            if negated:
                return False
            hit = True
    return hit


def _matches(pattern: str, event: str, loop_id: str) -> bool:
    if pattern in ("*", event):
        return True
    if pattern.endswith(".*"):
        return event.startswith(pattern[:-1]) or pattern == f"loop.{loop_id}.*"
    return False


def retriable(status: int | None) -> bool:
    """None = no HTTP answer (connection error, timeout)."""
    return status is None or status >= 500 or status in RETRIABLE_4XX


@dataclass(slots=True, eq=False)
class Delivery:
    request_id: str
    event: str
    url: str
    body: bytes
    headers: dict[str, str]
    generation: int
    seq: int  # emit order: a held delivery waits for one with a higher seq
    attempt: int = 1
    hold: bool = False  # reorder fault: wait for the next delivery to the same URL
    was_held: bool = False

    def copy(self) -> Delivery:
        return Delivery(
            self.request_id,
            self.event,
            self.url,
            self.body,
            self.headers,
            self.generation,
            self.seq,
        )


class WebhookDispatcher:
    """Owns the delivery queue, the sender tasks, the pooled HTTP client and the timers."""

    def __init__(
        self, state: SandboxState, options: SandboxOptions, clock: Callable[[], float]
    ) -> None:
        self.state = state
        self.options = options
        self.clock = clock
        seed = options.seed
        self._rng = random.Random(None if seed is None else seed + 1)  # noqa: S311 - simulation
        self.timers = Scheduler(clock, "sandbox-webhook-timers")
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._held: dict[str, list[Delivery]] = {}
        self._generation = 0
        self._seq = itertools.count()
        self._senders: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.in_flight = 0
        self._waiting = 0  # retries and delayed sends in ``timers`` (not reorder checks)

    def configure(self, options: SandboxOptions) -> None:
        self.options = options

    def backlog(self) -> dict[str, int]:
        """Deliveries not finished yet (``scheduled``: waiting for a retry or a delay)."""
        return {
            "queued": self._queue.qsize(),
            "in_flight": self.in_flight,
            "held": sum(len(v) for v in self._held.values()),
            "scheduled": self._waiting,
        }

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._client is not None:
            return
        size = self.options.webhook_concurrency
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        # The aiohttp transport (as in connector.hitl.client): httpx's own pool is several
        # times slower with dozens of concurrent connections.
        transport = AiohttpTransport(limits=limits)
        self._client = httpx.AsyncClient(transport=transport, trust_env=False)
        loop = asyncio.get_running_loop()
        self._senders = [
            loop.create_task(self._send_loop(), name=f"sandbox-webhook-sender-{n}")
            for n in range(size)
        ]
        self.timers.start()

    async def stop(self) -> None:
        """Timers, then senders, then the HTTP client; safe to call twice."""
        await self.timers.stop()
        senders, self._senders = self._senders, []
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self.clear()
        self._queue = asyncio.Queue()

    def clear(self) -> None:
        self._generation += 1
        while not self._queue.empty():
            self._queue.get_nowait()
        self._held.clear()
        self.timers.clear()
        self._waiting = 0

    # ---- emitting -------------------------------------------------------------------------

    def emit(self, event: str, record: RequestRecord, loop: LoopRecord | None) -> None:
        options = self.options
        targets = [
            (hook.url, hook.secret)
            for hook in self.state.webhooks_by_key.get(record.key_id, ())
            if hook.loop_id in (None, record.loop_id)
            and event_matches(hook.events, event, record.loop_id)
        ]
        callback = record.body.get("callback_url")
        if callback and event in TERMINAL_EVENTS:
            targets.append((callback, options.webhook_secret))
        if not targets:
            return
        now = self.clock()
        payload = build_payload(options.webhook_payload_style, event, record, loop, now)
        body = orjson.dumps(payload)
        stats = self.state.stats.webhooks
        for url, secret in targets:
            headers = {"Content-Type": "application/json"}
            headers.update(signature_headers(body, secret, options.webhook_signature))
            stats.bump_event(event, "emitted")
            delivery = Delivery(
                record.id, event, url, body, headers, self._generation, next(self._seq)
            )
            self._first(delivery, now)

    def _first(self, delivery: Delivery, now: float) -> None:
        """Draw the faults for one delivery and start it."""
        options, rng, stats = self.options, self._rng, self.state.stats.webhooks
        if options.webhook_drop_share and rng.random() < options.webhook_drop_share:
            stats.dropped += 1
            self._log(delivery, None, "dropped (fault)")
            return
        copies = [delivery]
        if options.webhook_duplicate_share and rng.random() < options.webhook_duplicate_share:
            stats.duplicated += 1
            copies.append(delivery.copy())
        for copy in copies:
            if options.webhook_reorder_share and rng.random() < options.webhook_reorder_share:
                stats.reordered += 1
                copy.hold = True
            delay = rng.uniform(0, options.webhook_delay_ms) / 1000
            if delay > 0:
                self._later(now + delay, functools.partial(self._ready, copy))
            else:
                self._ready(copy)

    def _ready(self, delivery: Delivery) -> None:
        if delivery.generation != self._generation:
            return
        if delivery.hold:
            self._held.setdefault(delivery.url, []).append(delivery)
            release = functools.partial(self._release_one, delivery)
            self.timers.at(self.clock() + REORDER_HOLD_SECONDS, release)
            return
        self._queue.put_nowait(delivery)

    def _release_one(self, delivery: Delivery) -> None:
        held = self._held.get(delivery.url, [])
        if any(d is delivery for d in held):
            held.remove(delivery)
            if not held:
                del self._held[delivery.url]
            self._enqueue_released(delivery)

    def _release_before(self, url: str, seq: int) -> None:
        """Release the deliveries to ``url`` held before the one with ``seq`` was emitted."""
        held = self._held.pop(url)
        for delivery in held:
            if delivery.seq < seq:
                self._enqueue_released(delivery)
        keep = [d for d in held if d.seq > seq]
        if keep:
            self._held[url] = keep

    def _enqueue_released(self, delivery: Delivery) -> None:
        delivery.hold, delivery.was_held = False, True
        self._queue.put_nowait(delivery)

    # ---- sending --------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            delivery = await self._queue.get()
            self.in_flight += 1
            try:
                await self._attempt(delivery)
            except Exception:  # a bug in one delivery must not stop this sender
                log.exception("sandbox webhook delivery failed unexpectedly")
            finally:
                self.in_flight -= 1

    async def _attempt(self, delivery: Delivery) -> None:
        assert self._client is not None
        attempt = delivery.attempt
        status: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                delivery.url,
                content=delivery.body,
                headers=delivery.headers,
                timeout=self.options.webhook_timeout_seconds,
            )
            status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        if delivery.generation != self._generation:
            return  # reset while in flight
        self._log(delivery, status, error, attempt)
        stats = self.state.stats.webhooks
        stats.sent += 1
        if attempt > 1:
            stats.retries += 1
        if status is not None and 200 <= status < 300:
            stats.delivered += 1
            stats.bump_event(delivery.event, "delivered")
        else:
            stats.failed_attempts += 1
            if not retriable(status):
                stats.rejected += 1
            elif attempt >= len(RETRY_SCHEDULE_SECONDS):
                stats.gave_up += 1
            else:
                delay = RETRY_SCHEDULE_SECONDS[attempt] * self.options.webhook_retry_scale
                delivery.attempt = attempt + 1
                self._later(self.clock() + delay, functools.partial(self._retry, delivery))
        if not delivery.was_held and delivery.url in self._held:
            self._release_before(delivery.url, delivery.seq)  # reorder: held ones go after it

    def _later(self, when: float, fn: Callable[[], None]) -> None:
        self._waiting += 1
        generation = self._generation

        def run() -> None:
            if generation == self._generation:
                self._waiting -= 1
                fn()

        self.timers.at(when, run)

    def _retry(self, delivery: Delivery) -> None:
        if delivery.generation == self._generation:
            self._queue.put_nowait(delivery)

    def _log(
        self, delivery: Delivery, status: int | None, error: str | None, attempt: int = 1
    ) -> None:
        d = delivery
        row = (self.clock(), d.request_id, d.event, d.url, attempt, status, error)
        self.state.deliveries.append(row)
