"""Wires the roles into one process with one lifecycle.

Start order: topics (create/validate) → HITL client → resolver → gateway (accepts webhooks
only once Kafka is ready) → submitter (creates requests only once their answers can be
received). Stop order, under one deadline (``batch.shutdown_deadline_seconds``): stop the
submitter fetching and let its batch commit → stop the gateway (drains HTTP) → stop the
resolver → close the HITL client. Never waits for humans.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.errors import KafkaError

from connector.config import Settings
from connector.errors import ConfigError
from connector.gateway.app import (
    GatewayApp,
    GatewayConfig,
    SinkUnavailable,
    check_gateway_config,
    gateway_server,
)
from connector.gateway.sink import KafkaCallbackSink
from connector.hitl.client import HitlClient
from connector.hitl.observe import ApiMetrics
from connector.hitl.tokens import make_callback_token
from connector.kafka.admin import ensure_topics
from connector.kafka.lag import LagTracker
from connector.kafka.role import drain
from connector.metrics import Metrics
from connector.resolver.reconciler import Reconciler
from connector.resolver.service import Resolver
from connector.serving import HttpServer
from connector.submitter.batch import BatchProcessor
from connector.submitter.journal import Journal
from connector.submitter.recovery import Recovery
from connector.submitter.service import Submitter

log = logging.getLogger(__name__)

ROLES = ("submitter", "gateway", "resolver")


def resolve_roles(role: str) -> list[str]:
    if role == "all":
        return list(ROLES)
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose all, {', '.join(ROLES)}")
    return [role]


def token_secrets(settings: Settings) -> tuple[bytes, ...]:
    """The callback token secrets (the first signs), falling back to the webhook secrets."""
    g = settings.gateway
    values = g.token_secrets or g.secrets
    return tuple(v for v in (s.get_secret_value().encode() for s in values) if v)


def gateway_config(settings: Settings) -> GatewayConfig:
    g = settings.gateway
    return GatewayConfig(
        signature_mode=g.signature,
        secrets=tuple(s.get_secret_value().encode() for s in g.secrets),
        token_secrets=token_secrets(settings),
        max_body_bytes=g.max_body_bytes,
        body_timeout_seconds=g.body_timeout_seconds,
        callback_signature=g.callback_signature,
    )


def check_runnable(settings: Settings, roles: Iterable[str]) -> None:
    """Problems that make a role useless, reported before anything connects."""
    roles = set(roles)
    if roles & {"submitter", "resolver"} and settings.hitl.api_key is None:
        raise ConfigError(
            "HITL_API_KEY is not set: export it (or HITL_API_KEY_FILE pointing at a file "
            "holding it); the submitter and the reconciler cannot call HITL.sh without it"
        )
    if settings.gateway.public_url and not token_secrets(settings):
        raise ConfigError(
            "gateway.public_url is set but there is no secret to sign callback URLs: set "
            "HITL_CALLBACK_TOKEN_SECRET (or HITL_WEBHOOK_SECRET)"
        )
    if "gateway" in roles:
        check_gateway_config(gateway_config(settings))
    if "submitter" in roles and not settings.loops.default and not settings.loops.routes:
        log.warning(
            "loops.default is unset and there are no routing rules: events without a "
            "loop_id will go to the DLQ with reason no_loop"
        )


class ConnectorApp:
    """The roles of one process, started and stopped in a fixed order."""

    def __init__(self, settings: Settings, role: str = "all") -> None:
        self.settings = settings
        self.roles = resolve_roles(role)
        check_runnable(settings, self.roles)
        self.metrics: Metrics | None = None
        if settings.metrics.enabled:
            self.metrics = Metrics()
            self.metrics.bound_labels(
                [settings.loops.default, *(r.loop_id for r in settings.loops.routes)],
                [o.value for o in settings.review.options]
                + [settings.policy.approve_decision, settings.policy.reject_decision],
            )
        observer = ApiMetrics(self.metrics) if self.metrics is not None else None
        self.client = HitlClient(settings.hitl, observer=observer)
        self.submitter: Submitter | None = None
        self.resolver: Resolver | None = None
        self.reconciler: Reconciler | None = None
        self.gateway: HttpServer | None = None
        self.sink: KafkaCallbackSink | None = None  # the gateway's
        self.poll_sink: KafkaCallbackSink | None = None  # the reconciler's own
        self._tasks: dict[str, asyncio.Task[None]] = {}
        secrets = token_secrets(settings)
        public = settings.gateway.public_url
        if "submitter" in self.roles:
            callback_url_for = None
            if public and secrets:
                secret = secrets[0]  # the first signs; every one verifies (rotation)
                base = public.rstrip("/") + "/webhooks/hitl/cb/"

                def callback_url_for(event_id: str) -> str | None:
                    return base + make_callback_token(event_id, secret)

            journal = Journal(settings.kafka, settings.topics.journal)
            recovery = Recovery(
                self.client,
                settings.kafka.group_id,
                skew_seconds=settings.batch.lookup_skew_seconds,
                default_loop=settings.loops.default,
                metrics=self.metrics,
            )
            processor = batch_processor(
                settings,
                self.client,
                recovery,
                callback_url_for=callback_url_for,
                journal=journal if settings.batch.journal else None,
            )
            self.submitter = Submitter(
                settings.kafka,
                settings.topics.input,
                settings.batch,
                processor,
                journal,
                blocked_until=self.client.blocked_until,
                metrics=self.metrics,
                cooperative=len(self.roles) > 1,  # others share the event loop
            )
        if "resolver" in self.roles:
            self.resolver = Resolver(
                settings.kafka, settings.topics, settings.resolver, metrics=self.metrics
            )
        if "gateway" in self.roles:
            self.sink = KafkaCallbackSink(
                settings.kafka, settings.topics.callbacks, settings.topics.unmatched
            )
        if "resolver" in self.roles and settings.resolver.reconcile:
            assert self.resolver is not None
            # Its own producer: polled decisions do not queue behind (or fail with) webhooks.
            sink = self.poll_sink = KafkaCallbackSink(
                settings.kafka, settings.topics.callbacks, settings.topics.unmatched
            )

            async def publish(request_id: str, callback: dict[str, Any], payload: Any) -> None:
                await sink.publish(request_id, callback, payload, None, via="poll")

            self.reconciler = Reconciler(
                settings.resolver,
                settings.hitl,
                self.client,
                self.resolver.table,
                publish,
                metrics=self.metrics,
            )
        # Every role serves /healthz, /readyz and /metrics; only the gateway role takes webhooks.
        g = settings.gateway
        config = gateway_config(settings)
        webhook_sink = self.sink if "gateway" in self.roles else None
        http = GatewayApp(config, webhook_sink, metrics=self.metrics, ready=self.ready)
        self.gateway = gateway_server(http, g)

    def ready(self) -> bool:
        """Kafka producer and consumers ready (the gateway's /readyz)."""
        sink_ok = all(s.ready() for s in (self.sink, self.poll_sink) if s is not None)
        resolver_ok = self.resolver is None or self.resolver.ready()
        return sink_ok and resolver_ok

    async def start(self) -> None:
        await ensure_topics(self.settings, create=self.settings.topics.create)
        await self.client.start()
        if self.sink is not None:
            await self.sink.start()
        if self.resolver is not None:
            await self.resolver.start()
            self._tasks["resolver"] = asyncio.create_task(self.resolver.run(), name="resolver")
        if self.reconciler is not None:
            assert self.poll_sink is not None
            await self.poll_sink.start()
            self._tasks["reconciler"] = asyncio.create_task(self._reconcile(), name="reconciler")
        if self.metrics is not None:
            self._tasks["gauges"] = asyncio.create_task(self._gauges(self.metrics), name="gauges")
        if self.gateway is not None:
            await self.gateway.start()
        if self.submitter is not None:
            await self.submitter.start()
            self._tasks["submitter"] = asyncio.create_task(self.submitter.run(), name="submitter")

    async def _reconcile(self) -> None:
        assert self.reconciler is not None
        interval = self.settings.resolver.reconcile_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconciler.run_once()
            except (KafkaError, SinkUnavailable, TimeoutError) as exc:
                # A broker outage: the next pass retries, and the broker's own WARNING/INFO
                # pair (kafka.failover) already tells the operator; no ERROR per pass.
                log.warning("reconcile pass skipped, Kafka unavailable: %s", exc)
            except Exception:
                log.exception("reconcile pass failed")

    async def _gauges(self, m: Metrics) -> None:
        """Refresh the gauges that are states, not events: lag, pending, oldest pending,
        asyncio tasks."""
        lags = {"submitter": LagTracker(m, "submitter"), "resolver": LagTracker(m, "resolver")}
        every = self.settings.metrics.refresh_seconds
        while True:
            try:
                m.asyncio_tasks.set(len(asyncio.all_tasks()))
                if self.submitter is not None:
                    await lags["submitter"].update(self.submitter.consumer_or_none)
                if self.resolver is not None:
                    await lags["resolver"].update(self.resolver.consumer_or_none)
                    table = self.resolver.table
                    m.pending_requests.set(table.size())
                    oldest = table.oldest_submitted()
                    m.oldest_pending_age.set(0 if oldest is None else max(0, time.time() - oldest))
            except Exception:
                log.exception("refreshing gauges failed")
            await asyncio.sleep(every)

    async def wait(self, stop: asyncio.Event) -> bool:
        """Until ``stop`` is set (True) or a role fails (False)."""
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait(
            {stopper, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED
        )
        stopper.cancel()
        for name, task in self._tasks.items():
            if task in done and not task.cancelled() and task.exception() is not None:
                log.error("%s failed: %s", name, task.exception(), exc_info=task.exception())
                return False
        return True

    async def stop(self) -> None:
        """Drain within the shutdown deadline, then close everything; safe to call twice."""
        deadline = self.settings.batch.shutdown_deadline_seconds
        tasks, self._tasks = self._tasks, {}
        if self.submitter is not None:
            task = tasks.get("submitter")
            if task is not None and not task.done():
                await drain(self.submitter, task, deadline)
            await self.submitter.stop()
        if self.gateway is not None:
            await self.gateway.stop()
        for name in ("reconciler", "gauges"):
            background = tasks.get(name)
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        if self.resolver is not None:
            task = tasks.get("resolver")
            if task is not None and not task.done():
                await drain(self.resolver, task, deadline)
            await self.resolver.stop()
        for sink in (self.sink, self.poll_sink):
            if sink is not None:
                await sink.stop()
        await self.client.stop()


def batch_processor(
    settings: Settings, client: HitlClient, recovery: Recovery, **options: Any
) -> BatchProcessor:
    """The submitter's ``BatchProcessor``, given the settings sections it reads."""
    return BatchProcessor(
        client,
        recovery,
        batch=settings.batch,
        hitl=settings.hitl,
        loops=settings.loops,
        review=settings.review,
        policy=settings.policy,
        topics=settings.topics,
        **options,
    )


def tune_gc() -> None:
    """Make Python's cyclic garbage collector cheap for a submitter alone in its process.

    A profile of the policy path showed ``gc_collect_main`` at 20 % of the CPU: at the default
    threshold (700 more live objects) young collections run every few records, and the records
    held by staged batches are promoted and scanned again and again in older generations.
    Objects alive after start-up (modules, clients, settings) are frozen out of every
    collection, and a young collection runs once 200,000 more objects are alive (at 50,000 a
    profile still showed 9-11 % in the collector; at 200,000 under 1 %). Not for the other
    roles: with ``--role all`` at 500 events/s the larger collections showed in the tail
    (hop 1 p99 222-969 ms against 135-212 ms at Python's defaults, alternating runs).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 20, 100)


async def run_app(
    settings: Settings,
    role: str = "all",
    stop: asyncio.Event | None = None,
    *,
    on_started: Callable[[], None] | None = None,
) -> int:
    """Run the chosen roles until SIGTERM/SIGINT (or ``stop``); returns an exit code.
    ``on_started`` runs once every role has started (the CLI tunes the GC there)."""
    app = ConnectorApp(settings, role)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        if on_started is not None:
            on_started()
        ok = await app.wait(stop)
        return 0 if ok else 1
    finally:
        await app.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
