"""API budget: calls per decision with lost webhooks, and the share of a rate limit used.

(a) Calls per decision. Broker, sandbox (auto-reviewer, webhooks to the connector's gateway,
``--webhook-drop-share`` 0 / 5 / 20 %) and the connector (every role) are separate processes.
N events go in; when every request has its decision on the output topic, API calls = the
sandbox's count of every authenticated API call (creates, polls, lists, anything:
``api_calls_total`` of ``GET /sandbox/stats``) and decisions = output records.

(b) Rate-limit share. The sandbox limits ``L`` calls per fixed ``W``-second window (windows
aligned to the epoch, ``X-RateLimit-Reset`` = window end); the connector is configured with
the same ``L``/``W`` and gets a backlog larger than the budget. Calls counted per *whole*
sandbox window (from ``GET /sandbox/calls``, by ``floor(ts / W)``), ÷ ``L``; 429s must be 0.

Settings: (a) runs at the shipped defaults for 0 % and 20 % lost (the reconciler's sweep
finds the lost ones, minutes later; the 20 % case once per bench run), and with a tuned
reconciler (``RESOLVER``, labelled) for 0 / 5 / 20 %; the clock starts before the first event
is produced, with the connector already running. (b) sets only the rate limit (both sides)
and produces the backlog before the submitter starts.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from bench.common import (
    BenchEnv,
    Figure,
    connector_config,
    free_port,
    produce_events,
    run_id,
    sandbox,
    start_connector,
    stop,
    topics_for,
)
from bench.state import create_connector_topics

SCENARIO = "budget"
PARTITIONS = 6
DROP_SHARES = (0.0, 0.05, 0.2)
TARGETS = {0.0: "<= 1.02", 0.2: "<= 1.25"}
# The polling fallback as a deployment would tune it for a fast reviewer: a request is
# overdue 10 s after submission; passes every 2 s.
RESOLVER = {
    "reconcile_interval_seconds": 2.0,
    "reconcile_max_wait_seconds": 10.0,
    "reconcile_repoll_seconds": 30.0,
    "unmatched_ttl_seconds": 60.0,
}


def _topics(run: str) -> dict[str, str]:
    return {k: v for k, v in topics_for(run).items() if v is not None}


class OutputCounter:
    """Counts committed records of the output topic (and distinct request ids)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.records = 0
        self.request_ids: set[bytes] = set()

    async def __aenter__(self) -> OutputCounter:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> int:
        batch = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
        for records in batch.values():
            for rec in records:
                self.records += 1
                for name, value in rec.headers or ():
                    if name == "hitl-request-id":
                        self.request_ids.add(bytes(value))
        return self.records


async def stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        r = await http.get(url + "/sandbox/stats", timeout=30)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


async def decisions_run(
    env: BenchEnv, drop: float, n: int, resolver: dict[str, Any] | None
) -> dict[str, float]:
    """One stack, ``n`` events, wait for ``n`` decisions; calls per decision and seconds.
    ``resolver``: settings over the shipped defaults (None: the defaults)."""
    run = run_id("budget")
    topics = _topics(run)
    await create_connector_topics(env.bootstrap, topics, PARTITIONS)
    port = free_port()
    with sandbox(
        env.tmp,
        "--auto-review",
        "--review-delay-min-ms",
        "20",
        "--review-delay-max-ms",
        "500",
        # callback_url deliveries unsigned, as documented (the URL's token authenticates)
        "--webhook-drop-share",
        str(drop),
        "--seed",
        "11",
    ) as (url, _sandbox_proc):
        config = connector_config(
            env,
            run,
            url,
            gateway={
                "host": "127.0.0.1",
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "token_secrets": ["bench-token-secret"],
                "signature": "required",
            },
            **({"resolver": resolver} if resolver else {}),
        )
        proc = start_connector(env, config, role="all")
        try:
            async with OutputCounter(env.bootstrap, topics["output"]) as out:
                started = time.monotonic()
                await produce_events(env.bootstrap, topics["input"], run, n)
                deadline = started + 900
                while out.records < n:
                    if proc.poll() is not None:
                        raise RuntimeError(f"connector exited {proc.returncode}; see {config}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {out.records}/{n} decisions after 900 s")
                    await out.poll()
                took = time.monotonic() - started
                await asyncio.sleep(1.0)  # anything that would still be called, is counted
                await out.poll()
            s = await stats(url)
        finally:
            stop(proc)
    if out.records != n or len(out.request_ids) != n:
        raise RuntimeError(f"{out.records} decisions for {len(out.request_ids)} requests, n={n}")
    calls = s["api_calls_total"]
    print(
        f"    drop {drop:.0%}: {n} decisions in {took:.1f} s, {calls} API calls "
        f"({calls / n:.3f}/decision), webhooks {s['webhooks'].get('dropped')} dropped, "
        f"calls {s['api_calls']}",
        flush=True,
    )
    return {"per_decision": calls / n, "seconds": took, "rate_limited": s["rate_limited"]}


async def calls_in_windows(url: str, since: float) -> list[tuple[float, int]]:
    async with httpx.AsyncClient() as http:
        r = await http.get(url + "/sandbox/calls", params={"since": since}, timeout=30)
        r.raise_for_status()
        return [(float(c["ts"]), int(c["status"])) for c in r.json()["calls"]]


async def rate_share_run(env: BenchEnv, limit: int, window: int, windows: int) -> dict[str, Any]:
    """Backlog > budget; calls per whole sandbox window ÷ limit, and 429s."""
    run = run_id("rate")
    topics = _topics(run)
    await create_connector_topics(env.bootstrap, topics, PARTITIONS)
    backlog = limit * (windows + 8)  # start-up window, skipped window, the one after the end
    await produce_events(env.bootstrap, topics["input"], run, backlog)
    with sandbox(
        env.tmp,
        "--rate-limit-calls",
        str(limit),
        "--rate-limit-window-seconds",
        str(window),
    ) as (url, _sandbox_proc):
        config = connector_config(
            env,
            run,
            url,
            hitl={"rate_limit_calls": limit, "rate_limit_window_seconds": window},
        )
        started = time.time()
        proc = start_connector(env, config, role="submitter")
        try:
            # Skip the window the connector starts in (start-up, first probe), then measure
            # ``windows`` whole windows.
            first = (math.floor(started / window) + 2) * window
            end = first + windows * window
            while time.time() < end + 0.5:
                if proc.poll() is not None:
                    raise RuntimeError(f"connector exited {proc.returncode}; see {config}")
                await asyncio.sleep(0.5)
            calls = await calls_in_windows(url, started - 1)
            s = await stats(url)
        finally:
            stop(proc)
    per_window: dict[int, int] = {}
    for ts, status in calls:
        if first <= ts < end:
            idx = math.floor(ts / window)
            if status != 429:
                per_window[idx] = per_window.get(idx, 0) + 1
    counts = [per_window.get(i, 0) for i in range(int(first // window), int(end // window))]
    created = s["creates"]
    if created >= backlog:
        raise RuntimeError("the backlog ran out during the measurement; make it larger")
    share = sum(counts) / (len(counts) * limit)
    print(
        f"    rate limit {limit}/{window} s: calls per window {counts} → {share:.1%}, "
        f"429s {s['rate_limited']}",
        flush=True,
    )
    return {"share": share, "min_share": min(counts) / limit, "rate_limited": s["rate_limited"]}


# Also run at the shipped resolver defaults; lost webhooks are then found by the sweep (a
# 300-event run with 20 % lost took 241 s; 2,000 events did not finish in 600 s), so that case
# runs in the first repetition only, on DEFAULT_DROP_EVENTS events.
DEFAULT_DROPS = (0.0, 0.2)
DEFAULT_DROP_EVENTS = 300


async def run(env: BenchEnv) -> list[Figure]:
    n = env.scale(2000, 300)
    variants = {"defaults": DEFAULT_DROPS, "tuned": DROP_SHARES}
    per: dict[tuple[str, float], list[float]] = {
        (v, d): [] for v, drops in variants.items() for d in drops
    }
    took: dict[tuple[str, float], list[float]] = {key: [] for key in per}
    shares: list[float] = []
    min_shares: list[float] = []
    limited: list[float] = []
    limit, window = (200, 5) if not env.quick else (100, 2)
    windows = env.scale(6, 4)
    for rep in range(env.repeats):
        print(f"  repetition {rep + 1}/{env.repeats}", flush=True)
        for variant, drops in variants.items():
            for drop in drops:
                if variant == "defaults" and drop and rep:
                    continue  # minutes each (the sweep's cadence): once a bench run
                print(f"    {variant}:", end="", flush=True)
                size = DEFAULT_DROP_EVENTS if variant == "defaults" and drop else n
                got = await decisions_run(env, drop, size, RESOLVER if variant == "tuned" else None)
                per[variant, drop].append(got["per_decision"])
                took[variant, drop].append(got["seconds"])
        got_rate = await rate_share_run(env, limit, window, windows)
        shares.append(got_rate["share"] * 100)
        min_shares.append(got_rate["min_share"] * 100)
        limited.append(float(got_rate["rate_limited"]))
    tuned = (
        f"tuned reconciler: overdue {RESOLVER['reconcile_max_wait_seconds']:.0f} s after "
        f"submission, passes every {RESOLVER['reconcile_interval_seconds']:.0f} s"
    )
    figures: list[Figure] = []
    for (variant, drop), values in per.items():
        label = "" if variant == "defaults" else " (tuned reconciler)"
        how = "shipped defaults" if variant == "defaults" else tuned
        figures.append(
            Figure(
                SCENARIO,
                f"API calls per decision, {drop:.0%} webhooks lost{label}",
                "calls",
                values,
                target=TARGETS.get(drop) if variant == "defaults" else None,
                better="lower",
                note=f"{n} events; sandbox's count of every API call ÷ decisions; {how}",
            )
        )
        figures.append(
            Figure(
                SCENARIO,
                f"time to full resolution, {drop:.0%} webhooks lost{label}",
                "s",
                took[variant, drop],
                better="lower",
                note=f"{n} events, clock started before the first produce → last decision "
                "visible (connector already running)",
            )
        )
    figures += [
        Figure(
            SCENARIO,
            "share of the rate limit used",
            "%",
            shares,
            target=">= 95",
            note=f"{limit} calls / {window} s configured on both sides, backlog produced "
            f"before the submitter starts; mean over {windows} whole sandbox windows",
        ),
        Figure(SCENARIO, "share of the rate limit used, worst window", "%", min_shares, note=""),
        Figure(SCENARIO, "429 answers", "count", limited, target="<= 0", better="lower"),
    ]
    return figures
