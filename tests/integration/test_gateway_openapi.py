"""Schemathesis against a real gateway, driven by its OpenAPI description.

``docs/gateway-openapi.yaml`` describes every route and status. The ``st`` CLI (in its own
process, as a client would be) generates positive and negative requests for every operation
and checks that none is answered with a server error other than the documented 503, and that
every status is one the description lists. The gateway runs with signatures unchecked
(accept-any), so the generated bodies reach the JSON parser and the payload normalizer (the
signature checks
have their own fuzz in ``test_gateway.py``). The test prints the number of requests sent and
the number of 5xx answers (which must be 0).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.harness import run_settings
from tests.integration.test_gateway import Running, start_gateway

pytestmark = pytest.mark.kafka

SPEC = Path(__file__).resolve().parents[2] / "docs" / "gateway-openapi.yaml"


@pytest.fixture(scope="module")
def unsigned(kafka_bootstrap: str) -> Iterator[Running]:
    running = start_gateway(run_settings(kafka_bootstrap, "http://127.0.0.1:9"), "accept-any")
    yield running
    running.stop()


def st_command() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent))
    assert exe is not None, "schemathesis is a dev dependency: run `make venv`"
    return [exe]


def run_st(url: str, tmp: Path, name: str, *selection: str) -> tuple[int, dict[int, int]]:
    """One ``st run``; asserts it found nothing; returns (examples, statuses seen)."""
    report = tmp / f"{name}.ndjson"
    done = subprocess.run(
        [
            *st_command(), "run", str(SPEC), "--url", url, *selection,
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
            "--seed", "20261127", "--phases", "examples,coverage,fuzzing", "--workers", "2",
            "--no-shrink", "--report", "ndjson", "--report-ndjson-path", str(report),
            "--suppress-health-check", "all", "--warnings", "off",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    statuses: dict[int, int] = {}
    for line in report.read_text().splitlines():
        for status in _statuses(orjson.loads(line)):
            statuses[status] = statuses.get(status, 0) + 1
    generated = re.search(r"(\d+) generated", done.stdout)
    cases = int(generated.group(1)) if generated else 0
    print(f"schemathesis {name}: examples={cases} statuses_sampled="
          f"{dict(sorted(statuses.items()))} exit={done.returncode}")  # fmt: skip
    # Exit 0 means no check failed: no 5xx at all (not_a_server_error) and only documented
    # statuses and content types.
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return cases, statuses


def test_schemathesis_finds_no_server_error(unsigned: Running, tmp_path: Path) -> None:
    # Most of the budget on the webhook body (the normalizer), then every operation.
    webhook, body_statuses = run_st(
        unsigned.url, tmp_path, "webhook", "--include-operation-id", "receiveWebhook",
        "--max-examples", "1000",
    )  # fmt: skip
    everything, all_statuses = run_st(unsigned.url, tmp_path, "all", "--max-examples", "60")
    server_errors = sum(
        n for statuses in (body_statuses, all_statuses) for s, n in statuses.items() if s >= 500
    )
    print(f"schemathesis: examples={webhook + everything} 5xx={server_errors}")
    assert webhook >= 1000 and server_errors == 0
    # Authenticated (signatures unchecked here): used, kept or ignored, all 200; never a 400.
    assert body_statuses.get(200, 0) > 0 and 400 not in body_statuses


def _statuses(event: object) -> list[int]:
    """Every ``"status_code": N`` of responses recorded anywhere in one ndjson event."""
    found: list[int] = []
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("status_code"), int) and "elapsed" in item:
                found.append(item["status_code"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found
