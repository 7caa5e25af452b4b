"""The polling fallback: find overdue requests and ask HITL.sh what became of them.

A request is overdue when it is still in the table at ``timeout_at + grace`` (or, when
configured, ``max_wait`` after submission) — its terminal webhook never came. One pass:

1. collect overdue requests from the assigned table partitions (skipping any polled within
   ``repoll_seconds``, and — for up to 30 s — partitions whose ``hitl.callbacks`` records
   are not all joined yet: the missing webhook may be among them);
2. page through the list endpoint (100 per call, newest first) until every overdue request
   was seen, the pages are older than the oldest overdue one, or paging has cost as many
   calls as GETs for the rest would (a single overdue request is never listed);
3. single GETs for whatever the list did not show;

all within ``reconcile_budget_share`` of the API budget per rate-limit window. What it
learns goes to ``hitl.callbacks`` with ``via: poll``, exactly like a webhook, so the resolver
joins it the same way (and a late webhook after a poll is a harmless duplicate).

Before that, the **sweep** (``sweep``) finds human decisions whose webhook was lost in minutes
rather than at the deadline: it spends most of the share continuously, one list call
(``status=completed``, newest first, 100 a page) every ``window / (share × SWEEP_PART)``
seconds, and publishes every completed request it sees that is still in the table. Pages:
the newest page on every other call (new decisions are there), deeper pages in between, down
to the oldest pending request, then again from the top. It is paid for by the requests it
watches (``SWEEP_CALLS_PER_REQUEST`` of a call per request that entered the table), so calls
per decision stay ≤ 1.25 at any load; at low load sweeps are rarer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from connector.config import HitlSettings, ResolverSettings
from connector.errors import HitlError, HitlPermanentError
from connector.hitl.payloads import MalformedPayload, NormalizedCallback, normalize_request_object
from connector.metrics import Metrics
from connector.records import RequestEntry, epoch
from connector.resolver.table import RequestTable

log = logging.getLogger(__name__)

# The share of the reconciler's budget the sweep may spend; the rest is for overdue GETs.
SWEEP_PART = 0.5
# Sweep calls earned per request that enters the table (the cost ceiling: 1 create + 0.2).
SWEEP_CALLS_PER_REQUEST = 0.2
PAGE = 100

Publish = Callable[[str, dict[str, Any], Any], Awaitable[None]]


class PollClient(Protocol):
    async def list_requests(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "created_at_desc",
    ) -> Any: ...

    async def get_request(self, request_id: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class ReconcileResult:
    overdue: int = 0
    list_calls: int = 0
    get_calls: int = 0
    found_terminal: int = 0
    still_pending: int = 0
    not_found: int = 0
    budget_exhausted: bool = False
    deferred_partitions: int = 0
    sweep_calls: int = 0
    sweep_found: int = 0


class Reconciler:
    """Polls HITL.sh for overdue requests within a share of the API budget."""

    def __init__(
        self,
        resolver: ResolverSettings,
        hitl: HitlSettings,
        client: PollClient,
        table: RequestTable,
        publish: Publish,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._r = resolver
        self._hitl = hitl
        self._m = metrics
        self._client = client
        self._table = table
        self._publish = publish
        self._polled: dict[str, float] = {}
        self._lagging_since: dict[int, float] = {}
        self._window_start = 0.0
        self._window_calls = 0
        # The sweep: earned calls, pacing, which page next, the ids already paid for.
        self._sweep_tokens = 1.0
        self._next_sweep = 0.0
        self._sweep_offset = 0
        self._deep_offset = PAGE
        self._deep_needed = False
        self._watched: set[str] = set()

    def _budget(self) -> int:
        h = self._hitl
        return max(1, int(h.rate_limit_calls * self._r.reconcile_budget_share))

    def _take_call(self, now: float) -> bool:
        window = self._hitl.rate_limit_window_seconds
        if now - self._window_start >= window:
            self._window_start, self._window_calls = now, 0
        if self._window_calls >= self._budget():
            return False
        self._window_calls += 1
        return True

    def overdue(self, now: float, skip: Collection[int] = ()) -> list[RequestEntry]:
        repoll = self._r.reconcile_repoll_seconds
        polled = self._polled
        return [
            e for e in self._table.due(now, skip) if now - polled.get(e.request_id, -1e18) >= repoll
        ]

    async def _deferred(self) -> set[int]:
        """Partitions whose callbacks are not all joined yet: their overdue requests may be
        answered by a webhook already in ``hitl.callbacks``, so polling them waits — for at
        most ``max(30 s, 3 passes)`` of continuous lag, so that a resolver which never
        catches up does not switch the polling fallback off."""
        probe = self._table.lag_probe
        if probe is None:
            return set()
        lagging = await probe()
        mono = time.monotonic()
        cap = max(30.0, 3 * self._r.reconcile_interval_seconds)
        for p in set(self._lagging_since) - lagging:
            del self._lagging_since[p]
        return {p for p in lagging if mono - self._lagging_since.setdefault(p, mono) < cap}

    def _earn(self) -> None:
        """Sweep calls for the requests that entered the table since the last look."""
        current: set[str] = set()
        for partition in self._table.partitions():
            current.update(self._table.request_ids(partition))
        new = len(current - self._watched)
        self._watched = current
        cap = self._budget() * SWEEP_PART
        self._sweep_tokens = min(cap, self._sweep_tokens + new * SWEEP_CALLS_PER_REQUEST)

    def _in_table(self, request_id: str) -> bool:
        return any(self._table.get(p, request_id) for p in self._table.partitions())

    async def sweep(self, now: float, result: ReconcileResult) -> None:
        """One paced list call of completed requests, when earned and due (see module doc)."""
        self._earn()
        mono = time.monotonic()
        if not self._watched or self._sweep_tokens < 1 or mono < self._next_sweep:
            return
        if not self._take_call(mono):
            result.budget_exhausted = True
            return
        pace = self._hitl.rate_limit_window_seconds / max(1.0, self._budget() * SWEEP_PART)
        self._next_sweep = mono + pace
        self._sweep_tokens -= 1
        offset = self._sweep_offset
        try:
            page = await self._client.list_requests(
                status="completed", limit=PAGE, offset=offset, sort="created_at_desc"
            )
        except HitlError as exc:
            log.warning("reconciler sweep call failed: %s", exc)
            return
        result.sweep_calls += 1
        callbacks, oldest_on_page = _read_page(page.requests, now)
        for cb in callbacks:
            repoll = self._r.reconcile_repoll_seconds
            recent = now - self._polled.get(cb.request_id, -1e18) < repoll
            if cb.terminal and not recent and self._in_table(cb.request_id):
                await self._publish(cb.request_id, cb.to_json(), None)
                self._polled[cb.request_id] = now
                result.sweep_found += 1
        self._next_page(offset, page, oldest_on_page)
        if self._m is not None:
            self._m.reconciler_polls.labels("sweep").inc()
            if result.sweep_found:
                self._m.reconciler_recovered.inc(result.sweep_found)

    def _next_page(self, offset: int, page: Any, oldest_on_page: float) -> None:
        """Newest page every other call; deeper pages in between, down to the oldest
        pending request (HITL's created_at may differ from our submission time: 300 s)."""
        oldest = self._table.oldest_submitted()
        deeper = page.has_more and oldest is not None and oldest_on_page > oldest - 300
        if offset == 0:
            self._deep_needed = deeper
            if not deeper:
                self._deep_offset = PAGE
        elif deeper:
            self._deep_offset = offset + PAGE
        else:
            self._deep_offset, self._deep_needed = PAGE, False
        self._sweep_offset = self._deep_offset if offset == 0 and self._deep_needed else 0

    async def run_once(self, now: float | None = None) -> ReconcileResult:
        now = time.time() if now is None else now
        result = ReconcileResult()
        if self._r.reconcile_sweep:
            await self.sweep(now, result)
        skip = await self._deferred()
        result.deferred_partitions = len(skip)
        overdue = {e.request_id: e for e in self.overdue(now, skip)}
        result.overdue = len(overdue)
        if not overdue:
            return result
        oldest = min((epoch(e.submitted_at) or now) for e in overdue.values())
        found: dict[str, NormalizedCallback] = {}
        offset = 0
        # Paging never costs more calls than single GETs of what is still missing would
        # (one overdue request: a GET at once; a page that finds nothing, e.g. the newest
        # page before the overdue ones, counts against that), so a pass costs at most twice
        # the GETs, and with many overdue requests a page answers up to 100 of them.
        while len(overdue) > 1 and result.list_calls < len(overdue) - len(found):
            if not self._take_call(time.monotonic()):
                result.budget_exhausted = True
                break
            try:
                page = await self._client.list_requests(limit=100, offset=offset)
            except HitlError as exc:
                log.warning("reconciler list call failed: %s", exc)
                break
            result.list_calls += 1
            callbacks, oldest_on_page = _read_page(page.requests, now)
            for cb in callbacks:
                if cb.request_id in overdue:
                    found[cb.request_id] = cb
            # Stop paging once the pages are older than anything we are looking for.
            if not page.has_more or oldest_on_page < oldest - 300:
                break
            offset = page.next_offset if page.next_offset is not None else offset + 100
        for request_id in overdue:
            if request_id in found:
                continue
            if not self._take_call(time.monotonic()):
                result.budget_exhausted = True
                break
            try:
                obj = await self._client.get_request(request_id)
                result.get_calls += 1
                found[request_id] = normalize_request_object(obj)
            except HitlPermanentError:
                result.get_calls += 1
                result.not_found += 1
            except (HitlError, MalformedPayload) as exc:
                log.warning("reconciler could not read request %s: %s", request_id, exc)
        for request_id, cb in found.items():
            if cb.terminal:
                # Marked as polled only once published: a failed publish (Kafka down) leaves
                # the request overdue, so the next pass finds it again.
                await self._publish(request_id, cb.to_json(), None)
                result.found_terminal += 1
            else:
                result.still_pending += 1
            self._polled[request_id] = now
        self._forget_old(now)
        if self._m is not None:
            if result.list_calls:
                self._m.reconciler_polls.labels("list").inc(result.list_calls)
            if result.get_calls:
                self._m.reconciler_polls.labels("get").inc(result.get_calls)
            if result.found_terminal:
                self._m.reconciler_recovered.inc(result.found_terminal)
        if result.overdue:
            log.info(
                "reconcile: overdue=%d list_calls=%d get_calls=%d terminal=%d pending=%d "
                "deferred_partitions=%d",
                result.overdue,
                result.list_calls,
                result.get_calls,
                result.found_terminal,
                result.still_pending,
                result.deferred_partitions,
            )
        return result

    def _forget_old(self, now: float) -> None:
        horizon = self._r.reconcile_repoll_seconds
        if len(self._polled) > 100_000:
            self._polled = {k: t for k, t in self._polled.items() if now - t < horizon}


def _read_page(requests: list[Any], now: float) -> tuple[list[NormalizedCallback], float]:
    """A list page's requests as callbacks (malformed ones skipped), and the creation time of
    its oldest request (``now`` when none has one): paging stops once pages are older."""
    callbacks: list[NormalizedCallback] = []
    oldest = now
    for obj in requests:
        try:
            cb = normalize_request_object(obj)
        except MalformedPayload:
            continue
        created = epoch(obj.get("created_at")) if isinstance(obj, dict) else None
        if created is not None:
            oldest = min(oldest, created)
        callbacks.append(cb)
    return callbacks, oldest
