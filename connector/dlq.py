"""``hitl-connector dlq replay``: re-publish dead-letter records once their cause is fixed.

Reads the DLQ topic from the beginning (no consumer group, so nothing is committed and any
number of replays can run; read_committed) up to the end offsets taken at start, keeps the
records that match ``--reason`` / ``--since`` / ``--until`` (on the DLQ record's timestamp),
at most ``--limit``, and sends each one's original key and value bytes to ``--to`` (default:
the input topic) with an idempotent producer. Headers are kept except ``error.*`` and
``source.*``; ``hitl-replayed-from: <dlq topic>/<partition>/<offset>`` is added. ``--dry-run``
prints what would be sent and sends nothing.

Replay is at-least-once: running it twice sends the records twice, and each copy is a new
input record (a new offset), so the submitter asks HITL.sh about each: filters are the
operator's job.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from aiokafka import TopicPartition

from connector.config import KafkaSettings, load_settings
from connector.errors import ConfigError, KafkaSetupError
from connector.kafka.admin import partition_ids
from connector.kafka.clients import make_consumer, make_producer
from connector.records import DLQ_REASONS, epoch, find_header, iso_from_ms

H_REPLAYED_FROM: Final = "hitl-replayed-from"
NO_REASON: Final = "(none)"
_DROPPED_PREFIXES: Final = ("error.", "source.")
_RELATIVE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
# Records sent before the producer's acknowledgements are awaited (bounds memory).
_SEND_WINDOW: Final = 1000
# A read that makes no progress for this long is a broken broker or topic, not a slow one.
_IDLE_TIMEOUT_SECONDS: Final = 30.0


def parse_time(text: str, *, now: float | None = None) -> int:
    """``text`` as epoch milliseconds: ISO 8601 (naive means UTC) or relative (``90m``,
    ``2h``, ``7d``, ``1w``: that long before now). Raises ``ValueError`` with the accepted forms.
    """
    value = text.strip()
    match = _RELATIVE.fullmatch(value.lower())
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return int(((time.time() if now is None else now) - seconds) * 1000)
    stamp = epoch(value)
    if stamp is None:
        raise ValueError(
            f"{text!r} is neither an ISO timestamp (2026-11-27T10:00:00Z) nor a relative "
            "time (30m, 2h, 7d, 1w)"
        )
    return int(stamp * 1000)


def _time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which DLQ records to replay. Times are epoch ms; ``until_ms`` is exclusive."""

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def matches(self, reason: str, timestamp_ms: int) -> bool:
        if self.reasons and reason not in self.reasons:
            return False
        if self.since_ms is not None and timestamp_ms < self.since_ms:
            return False
        return self.until_ms is None or timestamp_ms < self.until_ms


@dataclass(slots=True)
class ReplaySummary:
    """What a replay read, matched and sent."""

    dlq_topic: str
    target: str
    dry_run: bool
    scanned: int = 0
    sent: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    limited: bool = False
    omitted: int = 0  # matched, but the DLQ kept no value (too large); see source.* headers

    @property
    def matched(self) -> int:
        return sum(self.by_reason.values())

    def format(self) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.by_reason.items())) or "none"
        replayable = self.matched - self.omitted
        head = f"dry run: would replay {replayable}" if self.dry_run else f"replayed {self.sent}"
        tail = " (stopped at --limit)" if self.limited else ""
        if self.omitted:
            tail += (
                f"; skipped {self.omitted} whose value was too large to keep in the DLQ "
                "(replay them from their source.* coordinates)"
            )
        sent = "; nothing sent" if self.dry_run else ""
        return (
            f"{head} of {self.scanned} records read from {self.dlq_topic} to {self.target}"
            f"{tail}; by reason: {reasons}{sent}"
        )


def replay_headers(
    headers: Any, dlq_topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The original headers without ``error.*``/``source.*`` (or an earlier replay mark),
    plus ``hitl-replayed-from``."""
    kept = [
        (key, bytes(value))
        for key, value in headers or ()
        if value is not None and not key.startswith(_DROPPED_PREFIXES) and key != H_REPLAYED_FROM
    ]
    kept.append((H_REPLAYED_FROM, f"{dlq_topic}/{partition}/{offset}".encode()))
    return kept


def _describe(record: Any, reason: str) -> str:
    detail = (find_header(record.headers, "error.detail") or b"").decode("utf-8", "replace")
    key = "null" if record.key is None else repr(bytes(record.key)[:60])[2:-1]
    size = 0 if record.value is None else len(record.value)
    return (
        f"{record.topic}/{record.partition}/{record.offset} {iso_from_ms(record.timestamp)} "
        f"reason={reason} key={key} bytes={size} detail={detail[:120]}"
    )


async def replay(
    kafka: KafkaSettings,
    flt: ReplayFilter,
    *,
    source: str,
    to: str,
    dry_run: bool = False,
    show: int = 10,
    out: TextIO = sys.stdout,
) -> ReplaySummary:
    """Replay the records ``flt`` selects from the dead-letter topic ``source`` (``topics.dlq``,
    or e.g. the unmatched topic: webhooks the gateway kept as unusable, once the connector
    can read them) to ``to`` (the input topic, or ``hitl.callbacks``)."""
    dlq_topic, target = source, to
    if target == dlq_topic:
        raise ConfigError(f"--to {target} is the DLQ topic itself; replay into another topic")
    summary = ReplaySummary(dlq_topic, target, dry_run)
    dlq_partitions = await partition_ids(kafka, dlq_topic)
    for name, parts, what in (
        (dlq_topic, dlq_partitions, "DLQ topic (topics.dlq or --from)"),
        (target, await partition_ids(kafka, target), "target topic"),
    ):
        if not parts:
            raise KafkaSetupError(
                f"{what} {name} does not exist on {kafka.bootstrap_servers}; "
                "check the configuration or --to"
            )
    tps = [TopicPartition(dlq_topic, p) for p in dlq_partitions]
    consumer = make_consumer(kafka, role="dlq-replay", group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        if flt.since_ms is not None:
            # Every record at or after --since is at or after this offset (Kafka's time index).
            found = await consumer.offsets_for_times(dict.fromkeys(tps, flt.since_ms))
            for tp, hit in found.items():
                consumer.seek(tp, hit.offset if hit is not None else end[tp])
        producer = None if dry_run else make_producer(kafka, role="dlq-replay")
        if producer is not None:
            await producer.start()
        try:
            await _copy(consumer, producer, tps, end, flt, summary, show, out)
        finally:
            if producer is not None:
                await producer.stop()
    finally:
        await consumer.stop()
    return summary


async def _copy(
    consumer: Any,
    producer: Any,
    tps: Sequence[TopicPartition],
    end: dict[TopicPartition, int],
    flt: ReplayFilter,
    summary: ReplaySummary,
    show: int,
    out: TextIO,
) -> None:
    """Read each partition up to ``end``; send (or list) the matching records."""
    pending: list[asyncio.Future[Any]] = []
    remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
    last_progress = time.monotonic()
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=500)
        records = [r for tp, rs in batch.items() for r in rs if r.offset < end[tp]]
        for record in records:
            summary.scanned += 1
            raw = find_header(record.headers, "error.reason")
            reason = raw.decode("utf-8", "replace") if raw else NO_REASON
            if not flt.matches(reason, record.timestamp):
                continue
            if flt.limit is not None and summary.matched >= flt.limit:
                summary.limited = True
                break
            summary.by_reason[reason] += 1
            if find_header(record.headers, "error.value_omitted") is not None:
                # The value was too large to keep; replaying an empty record would be wrong.
                summary.omitted += 1
                continue
            if producer is None:
                if summary.matched <= show:
                    print("would send " + _describe(record, reason), file=out)
                continue
            headers = replay_headers(record.headers, record.topic, record.partition, record.offset)
            pending.append(
                await producer.send(summary.target, record.value, key=record.key, headers=headers)
            )
            if len(pending) >= _SEND_WINDOW:
                summary.sent += len(await asyncio.gather(*pending))
                pending.clear()
        if summary.limited:
            break
        for tp in list(remaining):
            if await consumer.position(tp) >= end[tp]:
                remaining.discard(tp)
        if batch:
            last_progress = time.monotonic()
        elif remaining and time.monotonic() - last_progress > _IDLE_TIMEOUT_SECONDS:
            stuck = ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(remaining))
            raise KafkaSetupError(
                f"reading {stuck} made no progress for {_IDLE_TIMEOUT_SECONDS:.0f}s; "
                "check the broker and retry"
            )
    summary.sent += len(await asyncio.gather(*pending))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")
    p.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="REASON",
        help=f"only this error.reason (repeatable): {', '.join(DLQ_REASONS)}",
    )
    p.add_argument(
        "--since", type=_time_arg, metavar="TIME", help="DLQ records at or after TIME (ISO or 2h)"
    )
    p.add_argument(
        "--until", type=_time_arg, metavar="TIME", help="DLQ records before TIME (ISO or 30m)"
    )
    p.add_argument("--limit", type=_positive, metavar="N", help="replay at most N records")
    p.add_argument("--to", metavar="TOPIC", help="target topic (default: topics.input)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="TOPIC",
        help="read this topic instead of topics.dlq (e.g. topics.unmatched --to topics.callbacks)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    p.add_argument(
        "--show", type=_positive, default=10, metavar="N", help="dry run: list the first N (10)"
    )


async def run_from_args(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    unknown = sorted(set(args.reason) - set(DLQ_REASONS))
    if unknown and getattr(args, "source", None) is None:
        print(
            f"note: the connector writes no reason {', '.join(unknown)} "
            f"(it writes {', '.join(DLQ_REASONS)})",
            file=sys.stderr,
        )
    flt = ReplayFilter(frozenset(args.reason), args.since, args.until, args.limit)
    if flt.since_ms is not None and flt.until_ms is not None and flt.since_ms >= flt.until_ms:
        raise ConfigError("--since must be before --until")
    summary = await replay(
        settings.kafka,
        flt,
        source=getattr(args, "source", None) or settings.topics.dlq,
        to=args.to or settings.topics.input,
        dry_run=args.dry_run,
        show=args.show,
    )
    print(summary.format())
    return 0
