"""HITL answers badly: 429 with an HTTP-date Retry-After, a create that never answers, and an
ambiguous success (created, then the response is cut).

Real broker, real sandbox over HTTP, and (for the stall) the real TCP fault proxy in
``tests/faultproxy.py`` between the connector and the sandbox. 503 + Retry-After in seconds and
429 with ``X-RateLimit-Reset`` are covered by ``test_submit_faults.py``.

``Watch`` (also used by ``test_chaos_network.py``) samples while a scenario runs: the
connector's in-flight creates, the process RSS, and pairs (committed input offsets, then the
sandbox's idempotency keys) for the "no commit past a gap" check: every input record below a
committed offset must already have its HITL request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import defaultdict
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from connector.config import Settings
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.faultproxy import FaultProxy
from tests.integration.harness import (
    API_KEY,
    event_of,
    lookup_calls,
    offsets,
    produce,
    read_all,
    run_settings,
    sandbox_get,
    wait_until,
)
from tests.integration.ledger import event_id_of, ledger

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

LOOP = "loop-test"
CREATE = ("POST", "/loops/{id}/requests")
# The event id inside each create body's context.connector (the Idempotency-Key is a digest).
_EVENT = re.compile(rb'"event_id":"([^"]+)"')
# A scenario's own growth of the test process (connector + sandbox thread); generous.
RSS_GROWTH_LIMIT = 256 * 1024 * 1024


def events(n: int, prefix: str, text: str = "text") -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}-{i}".encode(), orjson.dumps({"id": f"{prefix}-{i}", "content": f"{text} {i}"}))
        for i in range(n)
    ]


def creates(url: str) -> list[dict[str, Any]]:
    calls = sandbox_get(url, "/sandbox/calls")["calls"]
    return [c for c in calls if (c["method"], c["endpoint"]) == CREATE]


def sandbox_port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def all_done(settings: Settings) -> bool:
    snap = await offsets(
        settings.kafka.bootstrap_servers, settings.kafka.group_id, settings.topics.input
    )
    return snap.done and snap.total_end > 0


async def committed_total(settings: Settings) -> int:
    snap = await offsets(
        settings.kafka.bootstrap_servers, settings.kafka.group_id, settings.topics.input
    )
    return snap.total_committed


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def attempts_by_key(proxy: FaultProxy) -> dict[str, list[float]]:
    """Event id → wall times the connector sent a create for it (seen by the proxy)."""
    out: dict[str, list[float]] = defaultdict(list)
    for ts, _conn, data in proxy.captured:
        for match in _EVENT.finditer(data):
            out[match.group(1).strip().decode()].append(ts)
    return dict(out)


class Watch:
    """Background sampler for one scenario; see the module docstring."""

    def __init__(self, app: Any, settings: Settings, sandbox_url: str) -> None:
        self._app = app
        self._settings = settings
        self._url = sandbox_url
        self.max_in_flight = 0
        self.rss_start = rss_bytes()
        self.rss_max = self.rss_start
        self.samples: list[tuple[dict[int, int], set[str]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def in_flight(self) -> int:
        return int(self._app.client.pacer.in_flight)

    async def _run(self) -> None:
        s = self._settings
        last = 0.0
        while True:
            self.max_in_flight = max(self.max_in_flight, self.in_flight())
            self.rss_max = max(self.rss_max, rss_bytes())
            if time.monotonic() - last >= 0.5:
                last = time.monotonic()
                snap = await offsets(s.kafka.bootstrap_servers, s.kafka.group_id, s.topics.input)
                # Keys read after the offsets: a commit can only count requests made before it.
                got = await asyncio.to_thread(sandbox_get, self._url, "/sandbox/requests")
                keys = {event_of(r) for r in got["requests"]}
                self.samples.append((snap.committed, keys))
            await asyncio.sleep(0.02)

    @property
    def rss_growth(self) -> int:
        return self.rss_max - self.rss_start

    async def commits_past_a_gap(self) -> list[str]:
        """Input records committed (in some sample) before their HITL request existed."""
        s = self._settings
        inputs = await read_all(s.kafka.bootstrap_servers, s.topics.input, timeout=30)
        ids = {(r.partition, r.offset): event_id_of(r, s.batch.max_event_bytes) for r in inputs}
        bad: set[str] = set()
        for committed, keys in self.samples:
            for (partition, offset), event_id in ids.items():
                if offset < committed.get(partition, 0) and event_id not in keys:
                    bad.add(event_id)
        return sorted(bad)


def hitl_settings(bootstrap: str, base: str, **hitl: Any) -> Settings:
    """Short timeouts and a small in-flight window, so faults show within seconds."""
    values = {
        "connect_timeout_seconds": 1.0,
        "read_timeout_seconds": 1.5,
        "max_retries": 2,
        "backoff_base_seconds": 0.2,
        "backoff_max_seconds": 2.0,
        "max_in_flight": 8,
        "circuit_failure_threshold": 5,
        "circuit_open_seconds": 2.0,
    }
    values.update(hitl)
    return run_settings(
        bootstrap, base, hitl=values, batch={"max_batch_seconds": 4.0, "linger_ms": 20}
    )


async def test_429_with_http_date_retry_after_means_no_call_before_that_date(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    limit, window = 3, 6
    options = SandboxOptions(
        preset_loops=(LOOP,),
        rate_limit_calls=limit,
        rate_limit_window_seconds=window,
        rate_limit_retry_after=True,
        outage_retry_after_http_date=True,
    )
    with SandboxServer(options) as sandbox:
        settings = hitl_settings(
            kafka_bootstrap,
            sandbox.url,
            # The connector believes in a much larger budget: only the server's answers
            # (the HTTP-date first) can keep it from calling early.
            rate_limit_calls=1000,
            rate_limit_window_seconds=1.0,
            max_retries=5,
        )
        app = await connector_apps(settings, "submitter")
        # Exhaust this key's window from outside the connector, early in a window (so most
        # of it is left), until a 429 says when to come back.
        await asyncio.sleep(window - time.time() % window + 0.2)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(3 * limit):
                r = await http.get(f"{sandbox.url}/v1/test", headers=auth)
                if r.status_code == 429:
                    break
        assert r.status_code == 429
        told = r.headers["Retry-After"]
        assert not told.strip().isdigit(), f"Retry-After is not an HTTP-date: {told!r}"
        date = parsedate_to_datetime(told).timestamp()
        started = time.time()
        n = 2 * limit
        async with Watch(app, settings, sandbox.url) as watch:
            await produce(kafka_bootstrap, settings.topics.input, events(n, "date"))
            took = await wait_until(lambda: all_done(settings), timeout=90, what="all created")
        calls = [c for c in creates(sandbox.url) if c["ts"] >= started]
        limited = [c for c in calls if c["status"] == 429]
        # Each 429 names the end of its window as the date; the next call must not arrive
        # before it (100 ms for calls already in flight with the 429).
        early: list[tuple[float, float]] = []
        gaps: list[float] = []
        for c429 in limited:
            told_at = (int(c429["ts"]) // window + 1) * window
            later = [c["ts"] for c in calls if c["ts"] > c429["ts"] + 0.1]
            if later:
                gaps.append(min(later) - told_at)
            early += [(c429["ts"], ts) for ts in later if ts < told_at]
        before_date = [c for c in calls if c["ts"] < date]
        first_after = min((c["ts"] for c in calls if c["ts"] >= date), default=float("nan"))
        print(
            f"\n429 http-date: creates={len(calls)} 429s={len(limited)} "
            f"creates_before_date={len(before_date)} "
            f"first_create_after_date={first_after - date:+.2f}s "
            f"next_call_minus_told_date=min {min(gaps, default=float('nan')):+.2f}s "
            f"retry_after={told!r} max_in_flight={watch.max_in_flight}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        print(f"429 http-date ledger: {figures.line()}")
        assert figures.events_in == n and figures.lost == 0
        assert figures.duplicate_requests == 0 and figures.requests == n
        # Only the first call (before any header was seen) meets the exhausted window.
        assert len(limited) >= 1, "the connector never met the 429"
        assert len(before_date) <= 1, before_date
        assert not early, f"calls before the Retry-After date: {early[:5]}"
        assert sum(1 for c in calls if c["status"] == 201) == n
        assert await watch.commits_past_a_gap() == []


@pytest.mark.slow
async def test_create_that_never_answers_is_looked_up_then_sent_once_more(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as sandbox:
        async with FaultProxy("127.0.0.1", sandbox_port(sandbox.url), capture=True) as proxy:
            read_timeout = 1.5
            settings = hitl_settings(
                kafka_bootstrap, f"http://{proxy.address}", read_timeout_seconds=read_timeout
            )
            max_in_flight = settings.hitl.max_in_flight
            app = await connector_apps(settings, "submitter")
            async with Watch(app, settings, sandbox.url) as watch:
                await produce(kafka_bootstrap, settings.topics.input, events(10, "warm"))
                await wait_until(lambda: all_done(settings), timeout=60, what="warm-up")
                warm = await committed_total(settings)
                # Connections are accepted, requests are read and held: nothing answers.
                await proxy.blackhole(drop=False)
                stall_start = time.time()
                n = 30
                await produce(kafka_bootstrap, settings.topics.input, events(n, "stall"))
                stall_seconds = 10.0
                committed_during: set[int] = set()
                while time.time() - stall_start < stall_seconds:
                    committed_during.add(await committed_total(settings))
                    await asyncio.sleep(0.5)
                attempts_in_stall = attempts_by_key(proxy)
                await proxy.heal()
                healed = time.monotonic()
                await wait_until(lambda: all_done(settings), timeout=120, what="recovery")
                recovered = time.monotonic() - healed
                attempts_overall = attempts_by_key(proxy)
            stats = sandbox_get(sandbox.url, "/sandbox/stats")
            stalled = {k: v for k, v in attempts_in_stall.items() if k.startswith("stall-")}
            # A create that timed out may exist: it is sent again only after a lookup found
            # nothing (the held requests never reached the sandbox), so after the heal.
            retried = {k: attempts_overall[k] for k in stalled if len(attempts_overall[k]) > 1}
            same_key_gaps = [b - a for v in retried.values() for a, b in itertools.pairwise(v)]
            print(
                f"\nstall: stall_s={stall_seconds:.0f} read_timeout={read_timeout}s "
                f"keys_attempted_in_stall={len(stalled)} keys_retried={len(retried)} "
                f"attempts_in_stall={sum(map(len, stalled.values()))} "
                f"min_gap_same_key={min(same_key_gaps, default=float('nan')):.2f}s "
                f"committed_during_stall={sorted(committed_during)} warm={warm} "
                f"max_in_flight={watch.max_in_flight}/{max_in_flight} "
                f"proxy_peak_connections={proxy.stats.peak_active} "
                f"rss_growth={watch.rss_growth / 2**20:.1f}MiB "
                f"idempotent_replays={stats['idempotent_replays']} "
                f"extra_api_calls={lookup_calls(stats)} recovery={recovered:.1f}s"
            )
            figures = await ledger(settings, sandbox.url, recovery_s=recovered)
            print(f"stall ledger: {figures.line()}")
            assert figures.events_in == 10 + n and figures.lost == 0
            assert figures.duplicate_requests == 0 and figures.requests == 10 + n
            assert stalled, "no create reached the stalled endpoint"
            # Never sent again while the first attempt's outcome was unknown: the held creates
            # reach the sandbox at the heal, and the lookup after it finds them (adopted), or
            # finds nothing and the create is sent once more.
            assert all(len(ts) <= 2 for ts in retried.values()), "a create sent 3 times"
            assert all(ts[1] >= stall_start + stall_seconds - 0.5 for ts in retried.values())
            assert min(same_key_gaps, default=read_timeout) >= 0.9 * read_timeout
            assert lookup_calls(stats) >= 1 and stats["idempotent_replays"] == 0
            assert committed_during == {warm}, "offsets committed past the stalled records"
            assert watch.max_in_flight <= max_in_flight
            assert watch.rss_growth < RSS_GROWTH_LIMIT
            assert await watch.commits_past_a_gap() == []


@pytest.mark.parametrize("answer", ["drop", "500"])
async def test_ambiguous_success_is_looked_up_and_created_once(
    kafka_bootstrap: str, connector_apps: Any, answer: str
) -> None:
    """The request is stored, then the answer is lost (connection dropped, or a 500 after
    the store): the create is looked up, never sent again."""
    marker = "CUT-AFTER-CREATE"
    options = SandboxOptions(
        preset_loops=(LOOP,),
        ambiguous_marker=marker,
        ambiguous_rate=0.1,
        ambiguous_answer=answer,  # type: ignore[arg-type]
        seed=7,
    )
    with SandboxServer(options) as sandbox:
        settings = hitl_settings(kafka_bootstrap, sandbox.url, max_retries=4)
        app = await connector_apps(settings, "submitter")
        marked, plain = 10, 50
        async with Watch(app, settings, sandbox.url) as watch:
            await produce(
                kafka_bootstrap,
                settings.topics.input,
                events(marked, "cut", text=marker) + events(plain, "plain"),
            )
            took = await wait_until(lambda: all_done(settings), timeout=120, what="all created")
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        calls = creates(sandbox.url)
        injected = stats["errors_injected"]
        cut = injected.get("dropped_after_create", 0) + injected.get("500_after_create", 0)
        extra = lookup_calls(stats)
        print(
            f"\nambiguous ({answer}): events={marked + plain} responses_cut={cut} "
            f"create_calls={len(calls)} replayed_creates={stats['idempotent_replays']} "
            f"requests={stats.get('creates', '-')} extra_api_calls={extra} "
            f"max_in_flight={watch.max_in_flight}/{settings.hitl.max_in_flight} "
            f"all_committed={took:.1f}s"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        print(f"ambiguous ledger: {figures.line()}")
        assert figures.events_in == marked + plain and figures.lost == 0
        assert figures.duplicate_requests == 0 and figures.requests == marked + plain
        assert cut >= marked
        # Against a service that ignores Idempotency-Key: every create was sent exactly once;
        # each cut answer cost at most one lookup (one page holds all that was in flight).
        assert stats["idempotent_replays"] == 0 and len(calls) == marked + plain
        assert 1 <= extra <= cut
        assert watch.max_in_flight <= settings.hitl.max_in_flight
        assert await watch.commits_past_a_gap() == []
