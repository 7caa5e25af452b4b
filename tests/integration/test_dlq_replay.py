"""``hitl-connector dlq replay`` against the real broker: filters, dry run, what arrives."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from connector.config import KafkaSettings
from connector.dlq import H_REPLAYED_FROM, ReplayFilter, replay
from connector.records import SourceRef, dlq_record
from tests.conftest import TopicFactory
from tests.integration.harness import header, read_all

pytestmark = pytest.mark.kafka

HOUR_MS = 3_600_000
NOW_MS = int(time.time() * 1000)
# (key, value, reason, age in hours): the DLQ record's timestamp is now minus the age.
DEAD = [
    (b"k-old-schema", b'{"id": "a", "content": 42}', "schema", 48),
    (b"k-schema-1", b'{"id": "b", "content": 7}', "schema", 3),
    (b"k-schema-2", b'{"id": "c"}', "schema", 1),
    (None, b"{not json", "invalid_json", 1),
    (b"k-bin", b"\xff\xfe\x00 binary", "invalid_utf8", 2),
    (b"k-rej", b'{"id": "d", "content": "x"}', "hitl_rejected", 0),
]


async def _fill_dlq(bootstrap: str, dlq: str, source: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        futures = []
        for offset, (key, value, reason, age) in enumerate(DEAD):
            record = dlq_record(
                dlq,
                key=key,
                value=value,
                source=SourceRef(source, 0, offset, NOW_MS - age * HOUR_MS - 1000),
                reason=reason,
                detail=f"{reason} detail",
                original_headers=[("traceparent", b"00-abc-def-01"), ("app", b"x")],
            )
            futures.append(
                await producer.send(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    timestamp_ms=NOW_MS - age * HOUR_MS,
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _cli(args: list[str], cfg: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "connector.cli", "dlq", "replay", "--config", str(cfg), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_CONNECTOR_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.fixture
async def dlq_setup(
    kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> tuple[str, str, Path]:
    dlq = await topic_factory("dlq", partitions=2)
    target = await topic_factory("in", partitions=3)
    await _fill_dlq(kafka_bootstrap, dlq, "content.events")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": kafka_bootstrap},
                "topics": {"dlq": dlq, "input": target},
            }
        )
    )
    return dlq, target, cfg


async def test_dry_run_through_the_cli_counts_by_reason_and_sends_nothing(
    kafka_bootstrap: str, dlq_setup: tuple[str, str, Path]
) -> None:
    dlq, target, cfg = dlq_setup
    result = await asyncio.to_thread(_cli, ["--dry-run", "--since", "4h", "--show", "2"], cfg)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert sum(line.startswith(f"would send {dlq}/") for line in lines) == 2
    assert lines[-1] == (
        f"dry run: would replay 5 of 5 records read from {dlq} to {target}; by reason: "
        "hitl_rejected 1, invalid_json 1, invalid_utf8 1, schema 2; nothing sent"
    )
    assert await read_all(kafka_bootstrap, target, timeout=3) == []


async def test_replay_by_reason_and_time_keeps_bytes_and_marks_the_origin(
    kafka_bootstrap: str, dlq_setup: tuple[str, str, Path]
) -> None:
    dlq, target, _ = dlq_setup
    out = io.StringIO()
    flt = ReplayFilter(
        reasons=frozenset({"schema", "invalid_json"}),
        since_ms=NOW_MS - 5 * HOUR_MS,
        until_ms=NOW_MS + 1000,
    )
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    summary = await replay(kafka, flt, source=dlq, to=target, out=out)
    assert summary.sent == 3 and summary.by_reason == {"schema": 2, "invalid_json": 1}
    assert out.getvalue() == ""  # a real run lists nothing; the CLI prints the summary

    arrived = await read_all(kafka_bootstrap, target)
    assert sorted((r.key, r.value) for r in arrived if r.key) == sorted(
        (k, v)
        for k, v, reason, age in DEAD
        if k and reason in ("schema", "invalid_json") and age < 5
    )
    assert sum(r.key is None and r.value == b"{not json" for r in arrived) == 1
    for record in arrived:
        names = [name for name, _ in record.headers]
        assert not [n for n in names if n.startswith(("error.", "source."))], names
        assert header(record, "traceparent") == b"00-abc-def-01"
        assert header(record, "app") == b"x"
        origin = header(record, H_REPLAYED_FROM)
        assert origin is not None and origin.decode().startswith(f"{dlq}/")


async def test_cli_replay_with_limit_to_a_chosen_topic(
    kafka_bootstrap: str, topic_factory: TopicFactory, dlq_setup: tuple[str, str, Path]
) -> None:
    dlq, target, cfg = dlq_setup
    other = await topic_factory("other")
    result = await asyncio.to_thread(
        _cli, ["--reason", "schema", "--limit", "2", "--to", other], cfg
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip()
    assert summary.startswith("replayed 2 of ") and summary.endswith(
        f"records read from {dlq} to {other} (stopped at --limit); by reason: schema 2"
    )
    arrived = await read_all(kafka_bootstrap, other)
    assert len(arrived) == 2 and all(b'"id"' in r.value for r in arrived)
    assert await read_all(kafka_bootstrap, target, timeout=3) == []


async def test_cli_refuses_a_missing_target_and_bad_times(
    dlq_setup: tuple[str, str, Path],
) -> None:
    _, _, cfg = dlq_setup
    missing = await asyncio.to_thread(_cli, ["--to", "no-such-topic-here"], cfg)
    assert missing.returncode == 1
    assert "target topic no-such-topic-here does not exist" in missing.stderr
    bad = await asyncio.to_thread(_cli, ["--since", "yesterday"], cfg)
    assert bad.returncode == 2 and "neither an ISO timestamp" in bad.stderr
    dlq = yaml.safe_load(cfg.read_text())["topics"]["dlq"]
    into_dlq = await asyncio.to_thread(_cli, ["--to", dlq], cfg)
    assert into_dlq.returncode == 2 and "is the DLQ topic itself" in into_dlq.stderr
