"""``hitl-connector loadgen``: realistic content events for the input topic.

Produces a mix of text and image events, priorities (including the seed's ``normal``), AI
analyses that exercise the policy, and a configurable share of bad records, at a given rate
or as fast as possible. Owns nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

TEXTS = (
    "Great product, fast shipping, would buy again.",
    "Check out my site for cheap watches!!! limited offer",
    "I think this article misses the point about climate policy.",
    "You are all idiots and should be banned.",
    "Here is my honest review of the new phone after two weeks.",
)
BAD_RECORDS = (
    b"{not json",
    b"\xff\xfe\x00 binary",
    b'{"id": 5, "content": 42}',
    b'{"id": "img-no-url", "content_type": "image", "content": "pic"}',
    b"[1, 2, 3]",
)


def make_event(i: int, rng: random.Random, run_id: str) -> dict[str, Any]:
    image = rng.random() < 0.2
    risk = round(rng.random(), 3)
    event: dict[str, Any] = {
        "id": f"{run_id}-{i}",
        "content": rng.choice(TEXTS),
        "content_type": "image" if image else "text",
        "priority": rng.choice(("normal", "low", "high", "critical", "medium")),
        "ai_analysis": {
            "confidence": round(rng.random(), 3),
            "flags": rng.sample(["spam", "toxicity", "pii", "nsfw"], k=rng.randint(0, 2)),
            "risk_score": risk,
        },
        "metadata": {
            "user_id": f"u-{rng.randint(1, 10_000)}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": "content_api",
        },
    }
    if image:
        event["image_url"] = f"https://images.example.com/{run_id}/{i}.jpg"
    return event


def make_value(i: int, rng: random.Random, run_id: str, bad_share: float) -> bytes:
    if rng.random() < bad_share:
        return rng.choice(BAD_RECORDS)
    return orjson.dumps(make_event(i, rng, run_id))


async def generate(
    bootstrap: str,
    topic: str,
    *,
    count: int,
    rate: float | None,
    bad_share: float = 0.0,
    seed: int | None = None,
    progress: bool = False,
) -> int:
    """Produce ``count`` events (``rate`` per second, or as fast as possible)."""
    rng = random.Random(seed)  # noqa: S311 - test data, not security
    run_id = uuid.uuid4().hex[:8]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    start = time.monotonic()
    try:
        futures = []
        for i in range(count):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            key = f"{run_id}-{i}".encode()
            futures.append(
                await producer.send(topic, make_value(i, rng, run_id, bad_share), key=key)
            )
            if progress and (i + 1) % max(1, count // 20) == 0:
                done = (i + 1) / count
                bar = "#" * int(done * 30)
                print(f"\r[{bar:<30}] {i + 1}/{count}", end="", file=sys.stderr, flush=True)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    if progress:
        elapsed = time.monotonic() - start
        print(f"\nproduced {count} events in {elapsed:.1f}s", file=sys.stderr)
    return count


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    p.add_argument("--topic", default="content.events")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    p.add_argument("--bad-share", type=float, default=0.0, help="share of malformed records")
    p.add_argument("--seed", type=int, default=None)


async def run_from_args(args: argparse.Namespace) -> int:
    await generate(
        args.bootstrap,
        args.topic,
        count=args.count,
        rate=args.rate,
        bad_share=args.bad_share,
        seed=args.seed,
        progress=True,
    )
    return 0
