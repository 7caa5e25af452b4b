"""Shared fixtures: one real Kafka broker per test session, and unique topics per test.

``kafka_broker`` starts a single-node KRaft broker through ``connector.devkafka.DevKafka`` (the
same code as ``hitl-connector dev-kafka``) on a free port with a temporary data dir, and stops
it when the session ends. With ``HITL_TEST_BOOTSTRAP=host:port`` the tests use that broker
instead, and tests that need the broker process itself (``kafka_broker``) are skipped.

Besides ``PLAINTEXT`` (``kafka_bootstrap``) the session broker has more listeners:
``SSL`` (server TLS), ``MTLS`` (TLS with a required client certificate), ``SASL_SSL``
(SCRAM-SHA-256 and SCRAM-SHA-512 over TLS) and ``PROXIED`` (PLAINTEXT, advertised on a
different port than it binds, so a TCP fault proxy can listen there and forward). Their
certificates (a CA, a server certificate for 127.0.0.1/localhost, a client certificate, and an
unrelated CA for "untrusted" tests) are made with the ``openssl`` CLI at session start; see
the ``kafka_tls`` and ``kafka_proxied_listener`` fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from connector.devkafka import DevKafka, ExtraListener, ScramUser

EXTERNAL_BOOTSTRAP_ENV = "HITL_TEST_BOOTSTRAP"

TopicFactory = Callable[..., Awaitable[str]]

SCRAM_USERS = (
    ScramUser("hitl-connector", "scram-256-secret", "SCRAM-SHA-256"),
    ScramUser("hitl-connector-512", "scram-512-secret", "SCRAM-SHA-512"),
)


@dataclass(frozen=True)
class SessionCerts:
    """PEM files made for one session: ``ca`` signed ``server`` and ``client``;
    ``other_ca`` signed nothing the broker uses (a client trusting it must fail)."""

    dir: Path
    ca: Path
    server_keystore: Path  # the server's private key, then its certificate (Kafka's PEM)
    client_cert: Path
    client_key: Path
    other_ca: Path


@dataclass(frozen=True)
class KafkaTls:
    """How to reach the session broker over TLS and SASL (what ``kafka_tls`` returns)."""

    ssl_bootstrap: str  # SSL listener: server certificate only
    mtls_bootstrap: str  # SSL listener that requires a client certificate
    sasl_ssl_bootstrap: str  # SASL_SSL listener with SCRAM-SHA-256 and SCRAM-SHA-512
    certs: SessionCerts
    users: tuple[ScramUser, ...]

    def user(self, mechanism: str = "SCRAM-SHA-256") -> ScramUser:
        return next(u for u in self.users if u.mechanism == mechanism)


@dataclass(frozen=True)
class ProxiedListener:
    """A PLAINTEXT listener whose advertised port differs from the port it binds: a proxy
    must listen on ``advertised`` and forward to ``bound``, or clients cannot reach it."""

    bound: str  # "127.0.0.1:X", where the broker listens
    advertised: str  # "127.0.0.1:Y", what bootstrap and metadata hand to clients

    @property
    def bound_port(self) -> int:
        return int(self.bound.rsplit(":", 1)[1])

    @property
    def advertised_port(self) -> int:
        return int(self.advertised.rsplit(":", 1)[1])


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr[-2000:]}")


def make_test_certs(directory: Path) -> SessionCerts:
    """A CA, a server certificate (localhost, 127.0.0.1), a client certificate, and an
    unrelated second CA, as PEM files in ``directory``; EC P-256 keys, valid for 2 days."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make the test certificates")
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl(
            *("req", "-x509", *key, "-keyout", f"{name}.key", "-out", f"{name}.pem"),
            *("-days", "2", "-subj", f"/CN=hitl-test-{name}"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
            cwd=d,
        )
    leaves = {
        "server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, extensions in leaves.items():
        (d / f"{name}.ext").write_text(extensions)
        _openssl(
            *("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr"),
            *("-subj", f"/CN=hitl-test-{name}"),
            cwd=d,
        )
        _openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext"),
            *("-out", f"{name}.pem"),
            cwd=d,
        )
    keystore = d / "server-keystore.pem"
    keystore.write_text((d / "server.key").read_text() + (d / "server.pem").read_text())
    return SessionCerts(
        dir=d,
        ca=d / "ca.pem",
        server_keystore=keystore,
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
    )


def _security_properties(certs: SessionCerts) -> dict[str, str]:
    return {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(certs.server_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(certs.ca),
        "listener.name.mtls.ssl.client.auth": "required",
    }


@pytest.fixture(scope="session")
def test_certs(tmp_path_factory: pytest.TempPathFactory) -> SessionCerts:
    """The session's TLS material (PEM files), made once with the openssl CLI."""
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
async def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[DevKafka]:
    """The session's broker process (so tests can stop, kill, pause or restart it)."""
    if os.environ.get(EXTERNAL_BOOTSTRAP_ENV):
        pytest.skip(f"{EXTERNAL_BOOTSTRAP_ENV} is set: the broker process is not ours")
    certs: SessionCerts = request.getfixturevalue("test_certs")
    broker = DevKafka(
        tmp_path_factory.mktemp("kafka"),
        port=0,
        extra_listeners=[
            ExtraListener("SSL", "SSL"),
            ExtraListener("MTLS", "SSL"),
            ExtraListener("SASL_SSL", "SASL_SSL"),
            ExtraListener("PROXIED", "PLAINTEXT", advertised_port=0),
        ],
        scram_users=SCRAM_USERS,
        extra_properties=_security_properties(certs),
    )
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the test broker (external or the session's own)."""
    if external := os.environ.get(EXTERNAL_BOOTSTRAP_ENV):
        return external
    broker: DevKafka = request.getfixturevalue("kafka_broker")
    return broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_tls(kafka_broker: DevKafka, test_certs: SessionCerts) -> KafkaTls:
    """The session broker's TLS/SASL listeners, the CA (and other PEM files) and SCRAM users.

    Skipped with ``HITL_TEST_BOOTSTRAP`` (the external broker's listeners are unknown)."""
    return KafkaTls(
        ssl_bootstrap=kafka_broker.listener_address("SSL"),
        mtls_bootstrap=kafka_broker.listener_address("MTLS"),
        sasl_ssl_bootstrap=kafka_broker.listener_address("SASL_SSL"),
        certs=test_certs,
        users=SCRAM_USERS,
    )


@pytest.fixture(scope="session")
def kafka_proxied_listener(kafka_broker: DevKafka) -> ProxiedListener:
    """``(bound, advertised)`` of the PROXIED PLAINTEXT listener. Nothing listens on the
    advertised port until a test puts a proxy there (forwarding to ``bound``)."""
    return ProxiedListener(
        bound=kafka_broker.listener_bound_address("PROXIED"),
        advertised=kafka_broker.listener_address("PROXIED"),
    )


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    """Creation returns once the controller committed it; wait until the broker serves it."""
    for _ in range(100):
        (described,) = await admin.describe_topics([topic])
        leaders = [p["leader"] for p in described["partitions"]]
        if described["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"topic {topic} has no leaders after 5 s")


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """``await topic_factory("name", partitions=3, config={...})`` → a new unique topic name.

    Each name gets a uuid suffix, so tests never share topics; they are deleted afterwards.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    created: list[str] = []

    async def create(
        prefix: str = "test",
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
        response = await admin.create_topics([topic])
        for topic_name, code, *_ in response.topic_errors:
            assert code == 0, f"creating {topic_name} failed with error code {code}"
        created.append(name)
        await _wait_for_leaders(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        if created:
            # Best effort: the test may have killed or paused the broker.
            with contextlib.suppress(KafkaError):
                await admin.delete_topics(created)
        await admin.close()


@pytest.fixture
async def connector_apps() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start ``ConnectorApp``s in the test's loop: ``await connector_apps(settings, role)``.

    Every app started is stopped (drained) when the test ends.
    """
    from connector.app import ConnectorApp

    apps: list[ConnectorApp] = []

    async def start(settings: Any, role: str = "all") -> ConnectorApp:
        app = ConnectorApp(settings, role)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in reversed(apps):
        await app.stop()
