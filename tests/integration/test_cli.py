"""The ``hitl-connector`` commands as an operator runs them, against the real broker and sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connector.config import Settings
from connector.errors import KafkaSetupError
from connector.kafka.admin import ensure_topics
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import API_KEY, counted, produce, run_settings, wait_until

pytestmark = pytest.mark.kafka


def cli(args: list[str], cfg: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full = [sys.executable, "-m", "connector.cli", *args]
    if cfg is not None:
        full += ["--config", str(cfg)]
    return subprocess.run(
        full, capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False
    )


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.model_dump(mode="json", exclude={"hitl": {"api_key"}, "gateway": {"secrets"}})
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_names_a_bad_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("kafka:\n  bootstrap_server: x\n")
    result = cli(["check"], cfg)
    assert result.returncode == 2
    assert "kafka.bootstrap_server: unknown key" in result.stderr


async def test_topics_create_then_check_live(kafka_bootstrap: str, tmp_path: Path) -> None:
    with SandboxServer(SandboxOptions(preset_loops=("loop-test",))) as sandbox:
        settings = run_settings(kafka_bootstrap, sandbox.url)
        cfg = write_config(settings, tmp_path / "c.yaml")
        missing = cli(["check", "--live"], cfg, HITL_API_KEY=API_KEY)
        assert missing.returncode == 1 and "missing topics" in missing.stderr
        created = cli(["topics", "create"], cfg)
        assert created.returncode == 0, created.stderr
        assert settings.topics.requests in created.stdout
        live = cli(["check", "--live"], cfg, HITL_API_KEY=API_KEY)
        assert live.returncode == 0, live.stderr
        assert "API key valid" in live.stdout and "loops found: loop-test" in live.stdout
        # One broker: every topic with its one replica, and no warning about it.
        assert f"topic {settings.topics.requests}: partitions=3 replication=1 isr=1" in live.stdout
        assert "WARNING" not in live.stdout
        again = cli(["topics", "create"], cfg)
        assert "nothing (all topics exist)" in again.stdout


async def test_start_refuses_mis_shaped_internal_topics(kafka_bootstrap: str) -> None:
    settings = run_settings(kafka_bootstrap, "http://127.0.0.1:9")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(settings.topics.requests, 2, 1), NewTopic(settings.topics.callbacks, 3, 1)]
        )
    finally:
        await admin.close()
    with pytest.raises(KafkaSetupError) as info:
        await ensure_topics(settings, create=True)
    text = str(info.value)
    assert "must match" in text and "cleanup.policy=compact" in text


async def test_webhooks_register_list_pending_and_reconcile(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    options = SandboxOptions(preset_loops=("loop-test",))
    with SandboxServer(options) as sandbox:
        settings = run_settings(
            kafka_bootstrap, sandbox.url, resolver={"reconcile_max_wait_seconds": 1.0}
        )
        cfg = write_config(settings, tmp_path / "c.yaml")
        env = {"HITL_API_KEY": API_KEY, "HITL_WEBHOOK_SECRET": "s3cret"}
        reg = cli(
            ["webhooks", "register", "--url", "https://example.test/webhooks/hitl"], cfg, **env
        )
        assert reg.returncode == 0, reg.stderr
        assert "s3cret" not in reg.stdout
        listed = cli(["webhooks", "list"], cfg, **env)
        assert "https://example.test/webhooks/hitl" in listed.stdout

        # Three requests created by a submitter-only run; nobody answers them.
        from connector.app import ConnectorApp

        app = ConnectorApp(settings, "submitter")
        await app.start()
        try:
            await produce(
                kafka_bootstrap,
                settings.topics.input,
                [
                    (f"k{i}".encode(), orjson.dumps({"id": f"p{i}", "content": "x"}))
                    for i in range(3)
                ],
            )

            async def three() -> bool:
                return counted(app, "events", outcome="submitted", reason="") == 3

            await wait_until(three, timeout=60, what="3 requests")
        finally:
            await app.stop()
        pending = cli(["pending", "list"], cfg)
        assert pending.returncode == 0, pending.stderr
        assert "3 pending" in pending.stdout and "loop-test" in pending.stdout
        as_json = [
            orjson.loads(line)
            for line in cli(["pending", "list", "--json"], cfg).stdout.splitlines()
        ]
        assert {row["event_id"] for row in as_json} == {"p0", "p1", "p2"}
        rec = cli(["reconcile"], cfg, **env)
        assert rec.returncode == 0, rec.stderr
        fields: dict[str, Any] = dict(kv.split("=") for kv in rec.stdout.split(": ", 1)[1].split())
        assert fields["overdue"] == "3" and fields["list_calls"] == "1"
        assert fields["still_pending"] == "3" and fields["get_calls"] == "0"
