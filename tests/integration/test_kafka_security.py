"""The connector against the real broker over TLS, mTLS and SASL/SCRAM (issue 7).

The session broker (``tests/conftest.py``) has an ``SSL`` listener, an ``MTLS`` listener
(client certificate required) and a ``SASL_SSL`` listener with SCRAM-SHA-256/512 users; the
certificates were made by the fixture at session start. Each test points the connector at
one of them; the test itself reads and writes over PLAINTEXT to check where events went.
Wrong credentials, an untrusted CA or a missing client certificate must stop the start with
one clear sentence, within a bounded time, never echoing the password.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connector.app import ConnectorApp
from connector.config import KafkaSettings, Settings, load_settings
from connector.errors import ConfigError, KafkaSetupError
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.conftest import KafkaTls
from tests.integration.harness import (
    API_KEY,
    decision_settings,
    event_of,
    free_port,
    offsets,
    produce,
    read_all,
    run_settings,
    sandbox_get,
    wait_until,
)
from tests.integration.ledger import ledger

pytestmark = pytest.mark.kafka

LOOP = "loop-test"
# How long a refused start may take at most: one bootstrap pass plus one diagnostic probe,
# each bounded by request_timeout_ms (set to 10 s below), plus interpreter start-up.
REFUSAL_BOUND_S = 60.0


def secured(plain: Settings, **kafka: Any) -> Settings:
    """``plain`` (unique topics and group) with its kafka section pointed at a secured
    listener; the test keeps using ``plain`` to look at the topics over PLAINTEXT."""
    data = plain.kafka.model_dump() | {"request_timeout_ms": 10_000} | kafka
    return plain.model_copy(update={"kafka": KafkaSettings(**data)})


def security(tls: KafkaTls, variant: str, **overrides: Any) -> dict[str, Any]:
    """The kafka settings for one listener/credential variant."""
    certs = tls.certs
    if variant == "ssl":
        base: dict[str, Any] = {
            "bootstrap_servers": tls.ssl_bootstrap,
            "security_protocol": "SSL",
            "ssl_cafile": certs.ca,
        }
    elif variant == "mtls":
        base = {
            "bootstrap_servers": tls.mtls_bootstrap,
            "security_protocol": "SSL",
            "ssl_cafile": certs.ca,
            "ssl_certfile": certs.client_cert,
            "ssl_keyfile": certs.client_key,
        }
    else:
        mechanism = {"scram-sha-256": "SCRAM-SHA-256", "scram-sha-512": "SCRAM-SHA-512"}[variant]
        user = tls.user(mechanism)
        base = {
            "bootstrap_servers": tls.sasl_ssl_bootstrap,
            "security_protocol": "SASL_SSL",
            "ssl_cafile": certs.ca,
            "sasl_mechanism": mechanism,
            "sasl_username": user.name,
            "sasl_password": user.password,
        }
    return base | overrides


def events(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"k-{prefix}-{i}".encode(), orjson.dumps({"id": f"{prefix}-{i}", "content": f"post {i}"}))
        for i in range(n)
    ]


def cli(
    args: list[str], cfg: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``hitl-connector <args> --config cfg`` in a subprocess; (result, seconds it took)."""
    full = [sys.executable, "-m", "connector.cli", *args, "--config", str(cfg)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HITL_CONNECTOR_")}
    started = time.monotonic()
    result = subprocess.run(
        full,
        capture_output=True,
        text=True,
        timeout=REFUSAL_BOUND_S * 2,
        env={**clean, "HITL_API_KEY": API_KEY, **(env or {})},
        check=False,
    )
    return result, time.monotonic() - started


def write_config(settings: Settings, path: Path) -> Path:
    """The settings as an operator's YAML file, without any secret in it."""
    data = settings.model_dump(
        mode="json",
        exclude={"hitl": {"api_key"}, "gateway": {"secrets"}, "kafka": {"sasl_password"}},
    )
    path.write_text(yaml.safe_dump(data))
    return path


async def refused_start(settings: Settings) -> tuple[str, float]:
    """Start a submitter with ``settings``, expect ``KafkaSetupError``; (message, seconds).
    The app is stopped either way (its HTTP socket is bound at construction)."""
    app = ConnectorApp(settings, "submitter")
    started = time.monotonic()
    try:
        with pytest.raises(KafkaSetupError) as info:
            await app.start()
        return str(info.value), time.monotonic() - started
    finally:
        await app.stop()


@pytest.fixture
def sandbox() -> Any:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as server:
        yield server


# --- the submit path over each secured listener ------------------------------------------


@pytest.mark.parametrize("variant", ["ssl", "mtls", "scram-sha-256", "scram-sha-512"])
async def test_submit_path_over_a_secured_listener(
    kafka_bootstrap: str,
    kafka_tls: KafkaTls,
    sandbox: SandboxServer,
    connector_apps: Any,
    variant: str,
) -> None:
    plain = run_settings(kafka_bootstrap, sandbox.url)
    settings = secured(plain, **security(kafka_tls, variant))
    await connector_apps(settings, "submitter")
    n = 60
    await produce(kafka_bootstrap, plain.topics.input, events(n, plain.kafka.group_id))

    async def committed() -> bool:
        return (await offsets(kafka_bootstrap, plain.kafka.group_id, plain.topics.input)).done

    took = await wait_until(committed, timeout=120, what="input offsets committed over TLS")
    requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
    figures = await ledger(plain, sandbox.url)
    print(
        f"\nkafka-security[{variant}] via {settings.kafka.security_protocol} "
        f"{settings.kafka.bootstrap_servers}: requests={len(requests)} seconds={took:.1f}"
    )
    print(f"kafka-security[{variant}] ledger: {figures.line()}")
    assert figures.events_in == n and figures.lost == 0
    assert figures.duplicate_requests == 0 and figures.dlq == 0
    assert figures.undecided == n, "submitter only: every event waits for a human"
    assert len(requests) == n
    assert {event_of(r) for r in requests} == {f"{plain.kafka.group_id}-{i}" for i in range(n)}
    table = await read_all(kafka_bootstrap, plain.topics.requests)
    assert len(table) == n, "every request row was written through the secured producer"


async def test_every_role_over_sasl_ssl_gives_one_decision_each(
    kafka_bootstrap: str, kafka_tls: KafkaTls, connector_apps: Any
) -> None:
    """Submitter, gateway and resolver (transactions, consumer groups, the callback
    producer) all on the SCRAM-SHA-512 listener; the sandbox reviews and calls back."""
    options = SandboxOptions(
        preset_loops=(LOOP,),
        auto_review=True,
        review_delay_min_ms=20,
        review_delay_max_ms=200,
        webhook_secret="whsec-test-1",
        webhook_retry_scale=0.01,
        seed=11,
    )
    with SandboxServer(options) as server:
        plain = decision_settings(kafka_bootstrap, server.url)
        settings = secured(plain, **security(kafka_tls, "scram-sha-512"))
        await connector_apps(settings, "all")
        n = 50
        await produce(kafka_bootstrap, plain.topics.input, events(n, plain.kafka.group_id))

        async def decided() -> bool:
            return len(await read_all(kafka_bootstrap, plain.topics.output)) >= n

        took = await wait_until(decided, timeout=180, interval=1.0, what=f"{n} decisions")
        figures = await ledger(plain, server.url)
        decisions = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, plain.topics.output)
        ]
        print(
            f"\nkafka-security[all roles, SCRAM-SHA-512]: decisions={len(decisions)} "
            f"seconds={took:.1f}"
        )
        print(f"kafka-security[all roles, SCRAM-SHA-512] ledger: {figures.line()}")
        assert figures.events_in == n and figures.lost == 0
        assert figures.decisions_out == n and figures.undecided == 0
        assert figures.duplicate_requests == 0 and figures.duplicate_decisions == 0
        assert len({d["request_id"] for d in decisions}) == n


# --- the command line over TLS -----------------------------------------------------------


async def test_topics_create_and_check_live_over_tls_and_scram(
    kafka_bootstrap: str, kafka_tls: KafkaTls, sandbox: SandboxServer, tmp_path: Path
) -> None:
    plain = run_settings(kafka_bootstrap, sandbox.url)
    tls_cfg = write_config(secured(plain, **security(kafka_tls, "ssl")), tmp_path / "tls.yaml")
    created, _ = cli(["topics", "create"], tls_cfg)
    assert created.returncode == 0, created.stderr
    assert plain.topics.requests in created.stdout
    live, took_tls = cli(["check", "--live"], tls_cfg)
    assert live.returncode == 0, live.stderr
    assert f"kafka: {kafka_tls.ssl_bootstrap} reachable, topics valid" in live.stdout

    # SASL: the YAML file has no password; it comes from the environment, as documented.
    user = kafka_tls.user("SCRAM-SHA-256")
    sasl = secured(plain, **security(kafka_tls, "scram-sha-256"))
    sasl_cfg = write_config(sasl, tmp_path / "sasl.yaml")
    assert user.password not in sasl_cfg.read_text()
    env = {"HITL_CONNECTOR_KAFKA__SASL_PASSWORD": user.password}
    live_sasl, took_sasl = cli(["check", "--live"], sasl_cfg, env)
    print(
        f"\ncheck --live: tls exit={live.returncode} in {took_tls:.1f}s, "
        f"scram exit={live_sasl.returncode} in {took_sasl:.1f}s\n{live_sasl.stdout}"
    )
    assert live_sasl.returncode == 0, live_sasl.stderr
    assert f"kafka: {kafka_tls.sasl_ssl_bootstrap} reachable, topics valid" in live_sasl.stdout


# --- refusing to start, clearly ----------------------------------------------------------


async def test_wrong_password_refuses_to_start_naming_user_mechanism_and_bootstrap(
    kafka_bootstrap: str, kafka_tls: KafkaTls, sandbox: SandboxServer, tmp_path: Path
) -> None:
    plain = run_settings(kafka_bootstrap, sandbox.url)
    user = kafka_tls.user("SCRAM-SHA-256")
    wrong = "not-the-" + user.password
    settings = secured(plain, **security(kafka_tls, "scram-sha-256", sasl_password=wrong))
    expected = (
        f"authentication failed for user '{user.name}' via SCRAM-SHA-256 on bootstrap "
        f"{kafka_tls.sasl_ssl_bootstrap}"
    )

    # In process: ConnectorApp.start raises before anything is created.
    message, in_process_s = await refused_start(settings)
    assert expected in message
    assert wrong not in message and user.password not in message

    # The operator's view: `hitl-connector run` exits non-zero with that sentence.
    cfg = write_config(settings, tmp_path / "c.yaml")
    result, took = cli(
        ["run", "--role", "submitter"], cfg, {"HITL_CONNECTOR_KAFKA__SASL_PASSWORD": wrong}
    )
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    print(
        f"\nwrong password: in-process refusal in {in_process_s:.1f}s; "
        f"`run` exit={result.returncode} in {took:.1f}s\n  {last}"
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert last.startswith("hitl-connector: cannot connect to Kafka"), result.stderr[-2000:]
    assert expected in last
    assert wrong not in result.stderr + result.stdout
    assert took < REFUSAL_BOUND_S
    assert in_process_s < REFUSAL_BOUND_S
    # Nothing was created: the start stopped before the topics.
    assert sandbox_get(sandbox.url, "/sandbox/stats")["creates"] == 0


async def test_unknown_user_is_refused_like_a_wrong_password(
    kafka_tls: KafkaTls, kafka_bootstrap: str
) -> None:
    plain = run_settings(kafka_bootstrap, "http://127.0.0.1:9")
    settings = secured(plain, **security(kafka_tls, "scram-sha-512", sasl_username="nobody"))
    message, _ = await refused_start(settings)
    print(f"\nunknown user: {message}")
    assert "authentication failed for user 'nobody' via SCRAM-SHA-512" in message


async def test_untrusted_ca_refuses_to_start_with_a_tls_verification_message(
    kafka_bootstrap: str, kafka_tls: KafkaTls, tmp_path: Path
) -> None:
    plain = run_settings(kafka_bootstrap, "http://127.0.0.1:9")
    other_ca = kafka_tls.certs.other_ca
    settings = secured(plain, **security(kafka_tls, "ssl", ssl_cafile=other_ca))
    text, _ = await refused_start(settings)
    print(f"\nuntrusted CA: {text}")
    assert f"TLS verification of the broker certificate failed on {kafka_tls.ssl_bootstrap}" in text
    assert f"not signed by a CA in {other_ca}" in text

    cfg = write_config(settings, tmp_path / "c.yaml")
    result, took = cli(["run", "--role", "submitter"], cfg)
    print(f"`run` with an untrusted CA: exit={result.returncode} in {took:.1f}s")
    assert result.returncode == 1
    assert "TLS verification of the broker certificate failed" in result.stderr
    assert took < REFUSAL_BOUND_S


async def test_mtls_listener_without_a_client_certificate_is_refused_clearly(
    kafka_bootstrap: str, kafka_tls: KafkaTls
) -> None:
    plain = run_settings(kafka_bootstrap, "http://127.0.0.1:9")
    settings = secured(plain, **security(kafka_tls, "mtls", ssl_certfile=None, ssl_keyfile=None))
    message, _ = await refused_start(settings)
    print(f"\nmTLS without a client certificate: {message}")
    assert kafka_tls.mtls_bootstrap in message
    assert "client certificate (kafka.ssl_certfile and kafka.ssl_keyfile)" in message


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("plaintext client on SSL", "closed the connection during set-up"),
        ("SSL client on SASL_SSL", "closed the connection during set-up"),
        ("SASL_SSL client on SSL", "does not speak SASL (security_protocol=SASL_SSL)"),
        ("SSL client on PLAINTEXT", "a TLS client on a listener without TLS"),
        ("PLAIN mechanism on SCRAM", "SASL mechanism PLAIN is not enabled on bootstrap"),
        ("nothing listening", "connection refused (nothing listens there)"),
    ],
)
async def test_a_mismatched_listener_is_refused_naming_the_cause(
    kafka_bootstrap: str, kafka_tls: KafkaTls, case: str, needle: str
) -> None:
    plain = run_settings(kafka_bootstrap, "http://127.0.0.1:9")
    ca = kafka_tls.certs.ca
    sasl = security(kafka_tls, "scram-sha-256")
    kafka: dict[str, Any] = {
        "plaintext client on SSL": {"bootstrap_servers": kafka_tls.ssl_bootstrap},
        "SSL client on SASL_SSL": security(
            kafka_tls, "ssl", bootstrap_servers=kafka_tls.sasl_ssl_bootstrap
        ),
        "SASL_SSL client on SSL": sasl | {"bootstrap_servers": kafka_tls.ssl_bootstrap},
        "SSL client on PLAINTEXT": {
            "bootstrap_servers": kafka_bootstrap,
            "security_protocol": "SSL",
            "ssl_cafile": ca,
        },
        "PLAIN mechanism on SCRAM": sasl | {"sasl_mechanism": "PLAIN"},
        "nothing listening": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
    }[case]
    message, took = await refused_start(secured(plain, **kafka))
    print(f"\n{case}: refused in {took:.1f}s: {message}")
    address = kafka["bootstrap_servers"]
    assert message.startswith(f"cannot connect to Kafka at {address}: ")
    assert needle in message
    assert sasl["sasl_password"] not in message
    assert took < REFUSAL_BOUND_S


# --- configuration checks (no broker involved) -------------------------------------------


@pytest.mark.parametrize(
    ("kafka", "needle"),
    [
        (
            {"security_protocol": "SASL_SSL"},
            "kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_username": "u",
            },
            "security_protocol SASL_SSL needs kafka.sasl_password",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_password": "p",
            },
            "needs kafka.sasl_username",
        ),
    ],
)
def test_missing_sasl_fields_are_rejected_by_config_validation(
    tmp_path: Path, kafka: dict[str, Any], needle: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"kafka": kafka}))
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert needle in str(info.value)


async def test_unreadable_ca_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    settings = Settings(
        kafka={
            "bootstrap_servers": "127.0.0.1:9",
            "security_protocol": "SSL",
            "ssl_cafile": missing,
        },
        hitl={"api_key": API_KEY},
        gateway={"host": "127.0.0.1", "port": 0},
    )
    app = ConnectorApp(settings, "submitter")
    try:
        with pytest.raises(ConfigError) as info:
            await app.start()
    finally:
        await app.stop()
    assert f"kafka.ssl_cafile={missing}" in str(info.value)
