"""Wires the roles into one process with one lifecycle.

Start order: topics (create/validate) → HITL client → roles. Stop order, under one deadline
(``batch.shutdown_deadline_seconds``): stop fetching → finish in-flight creates → commit →
close Kafka clients → close the HITL client. Never waits for humans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

from connector.config import Settings
from connector.errors import ConfigError
from connector.hitl.client import HitlClient
from connector.kafka.admin import ensure_topics
from connector.submitter.service import Submitter, drain

log = logging.getLogger(__name__)

ROLES = ("submitter", "gateway", "resolver")
IMPLEMENTED_ROLES = ("submitter",)


def resolve_roles(role: str) -> list[str]:
    roles = list(ROLES) if role == "all" else [role]
    missing = [r for r in roles if r not in IMPLEMENTED_ROLES]
    if role != "all" and missing:
        raise ConfigError(f"role {role!r} is not available in this version yet")
    return [r for r in roles if r in IMPLEMENTED_ROLES]


def check_runnable(settings: Settings, roles: Iterable[str]) -> None:
    """Problems that make a role useless, reported before anything connects."""
    if "submitter" in roles and settings.hitl.api_key is None:
        raise ConfigError(
            "HITL_API_KEY is not set: export it (or HITL_API_KEY_FILE pointing at a file "
            "holding it); the submitter cannot create requests without it"
        )
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
        self.client = HitlClient(settings.hitl)
        self.submitter = Submitter(settings, self.client, blocked_until=self.client.blocked_until)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self.settings, create=self.settings.topics.create)
        await self.client.start()
        await self.submitter.start()
        self._task = asyncio.create_task(self.submitter.run(), name="submitter")

    async def wait(self, stop: asyncio.Event) -> bool:
        """Until ``stop`` is set (True) or a role fails (False)."""
        assert self._task is not None, "start() first"
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait({self._task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if self._task in done and self._task.exception() is not None:
            log.error("submitter failed: %s", self._task.exception())
            return False
        return True

    async def stop(self) -> None:
        """Drain within the shutdown deadline, then close everything; safe to call twice."""
        if self._task is not None and not self._task.done():
            log.info("stopping: finishing the batch in progress")
            await drain(self.submitter, self._task, self.settings.batch.shutdown_deadline_seconds)
        await self.submitter.stop()
        await self.client.stop()
        s = self.submitter.stats
        log.info(
            "stopped: consumed=%d created=%d policy=%d dlq=%s",
            s.consumed,
            s.created,
            s.policy,
            s.dlq,
        )


async def run_app(settings: Settings, role: str = "all", stop: asyncio.Event | None = None) -> int:
    """Run the chosen roles until SIGTERM/SIGINT (or ``stop``); returns an exit code."""
    app = ConnectorApp(settings, role)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        ok = await app.wait(stop)
        return 0 if ok else 1
    finally:
        await app.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
