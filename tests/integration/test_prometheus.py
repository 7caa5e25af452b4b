"""A real Prometheus scraping a real run of the connector: the dashboard's queries return data.

Real broker, real sandbox (auto-reviewer, rate-limit headers on), the connector with every
role, and Debian's ``prometheus`` binary started on a free port with a 1 s scrape interval and
the repo's ``alerts.yml``. Good and bad events and one forged webhook make most series appear;
then the raw scrape must pass ``promtool check metrics``, every ``expr`` of the Grafana
dashboard must return a non-empty result, and every alert rule must be loaded and healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    WEBHOOK_SECRET,
    decision_settings,
    free_port,
    produce,
    read_all,
    wait_until,
)

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "hitl-connector.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SECRET = WEBHOOK_SECRET
LOOP = "loop-test"
GOOD = 30
# What Grafana would put in for the template variables (all instances, all loops).
VARIABLES = {
    "instance": ".*",
    "loop": ".*",
    "__rate_interval": "30s",
    "__interval": "5s",
    "__range": "5m",
}
VARIABLE_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(expr: str) -> str:
    return VARIABLE_RE.sub(lambda m: VARIABLES[m.group(1) or m.group(2)], expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels if p["type"] != "row" for t in p["targets"]]


@contextlib.contextmanager
def prometheus_server(tmp: Path, target: str) -> Iterator[str]:
    """Debian's ``prometheus`` scraping ``target`` every second; yields its base URL."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not on PATH (scripts/ensure_prometheus.sh installs it)")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "hitl-connector", "static_configs": [{"targets": [target]}]}
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def prom_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def instant(client: httpx.AsyncClient, base: str, query: str) -> dict[str, Any]:
    response = await client.get(f"{base}/api/v1/query", params={"query": query})
    body: dict[str, Any] = response.json()
    return body


async def forge_webhook(client: httpx.AsyncClient, gateway_url: str) -> int:
    body = orjson.dumps({"event": "request.completed", "request_id": "forged", "data": {}})
    response = await client.post(
        f"{gateway_url}/webhooks/hitl",
        content=body,
        headers={"content-type": "application/json", "x-hitl-signature-256": "sha256=" + "0" * 64},
    )
    return response.status_code


def bad_events() -> list[tuple[bytes, bytes]]:
    return [
        (b"bad-json", b"{not json"),
        (b"bad-json-2", b"[1, 2"),
        (b"bad-utf8", b"\xff\xfe\xfd"),
        (b"bad-schema", orjson.dumps({"id": "no-content"})),
    ]


def good_events(run: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"k-{i}".encode(), orjson.dumps({"id": f"{run}-{i}", "content": f"post {i}"}))
        for i in range(GOOD)
    ]


async def test_every_dashboard_query_returns_data_from_a_real_scrape(
    kafka_bootstrap: str, connector_apps: Any, prom_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    options = SandboxOptions(
        preset_loops=(LOOP,),
        auto_review=True,
        review_delay_min_ms=20,
        review_delay_max_ms=200,
        webhook_secret=SECRET,
        webhook_retry_scale=0.01,
        # A limit makes the sandbox send X-RateLimit-* headers (the budget panels need them).
        rate_limit_calls=100_000,
    )
    with SandboxServer(options) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url)
        app = await connector_apps(settings, "all")
        assert app.gateway is not None
        gateway_url = app.gateway.url
        target = gateway_url.removeprefix("http://")
        with prometheus_server(tmp_path, target) as prom:

            async def scraping() -> bool:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    up = await instant(prom_client, prom, 'up{job="hitl-connector"}')
                    return [r["value"][1] for r in up["data"]["result"]] == ["1"]
                return False

            try:
                await wait_until(scraping, timeout=20, what="Prometheus scraping the connector")
            except AssertionError:
                print((tmp_path / "prometheus.log").read_text()[-3000:])
                raise

            # Spread the events out so rates are non-zero over several scrapes.
            run = settings.kafka.group_id
            await produce(kafka_bootstrap, settings.topics.input, bad_events())
            await produce(kafka_bootstrap, settings.topics.input, good_events(run)[: GOOD // 2])
            assert await forge_webhook(prom_client, gateway_url) == 401
            await asyncio.sleep(1.5)
            await produce(kafka_bootstrap, settings.topics.input, good_events(run)[GOOD // 2 :])

            async def decided() -> bool:
                return len(await read_all(kafka_bootstrap, settings.topics.output)) >= GOOD

            await wait_until(decided, timeout=30, interval=0.5, what=f"{GOOD} decisions")
            started = time.monotonic()

            raw = (await prom_client.get(f"{gateway_url}/metrics")).content
            check = subprocess.run(
                ["promtool", "check", "metrics"],
                input=raw,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert check.returncode == 0, (check.stdout + check.stderr).decode()

            # Let Prometheus scrape the final values a few times.
            await asyncio.sleep(max(0.0, 3.5 - (time.monotonic() - started)))
            failures: list[str] = []
            for title, expr in dashboard_queries():
                query = substitute(expr)
                body = await instant(prom_client, prom, query)
                if body.get("status") != "success":
                    failures.append(f"[{title}] error {body.get('error')}: {query}")
                elif not body["data"]["result"]:
                    failures.append(f"[{title}] empty: {query}")
            print(f"\n{len(dashboard_queries())} dashboard queries, {len(failures)} failing")
            for failure in failures:
                print("  " + failure)
            assert failures == []

            rules = (await prom_client.get(f"{prom}/api/v1/rules")).json()["data"]["groups"]
            loaded = {r["name"]: r for g in rules for r in g["rules"] if r["type"] == "alerting"}
            expected = {
                r["alert"]
                for g in yaml.safe_load(ALERTS.read_text())["groups"]
                for r in g["rules"]
                if "alert" in r
            }
            assert set(loaded) == expected
            assert [n for n, r in loaded.items() if r["health"] == "err"] == []
