"""Building aiokafka clients with the connector's safe defaults (design §9).

Owns: connection and security settings (TLS, mTLS, SASL), the defaults that aiokafka gets
wrong for us (idempotence, no auto-commit, earliest, read_committed), and explaining why a
connection fails (``explain_connect_failure``: aiokafka itself only says "Unable to
bootstrap"). Does not own committing (``kafka.checkpoint``) or topic management
(``kafka.admin``).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiokafka.producer.sender as aiokafka_sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from connector.config import KafkaSettings
from connector.errors import ConfigError
from connector.kafka.failover import avoid_hung_brokers, forget_coordinators_on_hung_brokers


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL/SASL_SSL (None otherwise); unreadable PEM files are a
    ``ConfigError`` naming the setting."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"kafka.ssl_cafile={kafka.ssl_cafile}: cannot load the CA certificates ({exc})"
        ) from None
    ctx.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile:
        try:
            ctx.load_cert_chain(
                str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"kafka.ssl_certfile={kafka.ssl_certfile} / kafka.ssl_keyfile="
                f"{kafka.ssl_keyfile}: cannot load the client certificate and key ({exc})"
            ) from None
    elif kafka.ssl_keyfile:
        raise ConfigError("kafka.ssl_keyfile is set without kafka.ssl_certfile")
    return ctx


def connection_kwargs(kafka: KafkaSettings, *, role: str) -> dict[str, Any]:
    """Bootstrap, identity and security options shared by every client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "client_id": f"{kafka.client_id}-{role}",
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    ctx = ssl_context(kafka)
    if ctx is not None:
        kwargs["ssl_context"] = ctx
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        assert kafka.sasl_password is not None  # checked by KafkaSettings
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return kwargs


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        return address.strip().strip("[]"), 9092
    return host.strip("[]"), int(port)


def _explain(kafka: KafkaSettings, address: str, exc: BaseException) -> str:
    """One sentence naming what failed on ``address``; never contains the password."""
    proto = kafka.security_protocol
    if isinstance(exc, SaslAuthenticationFailed):
        return (
            f"authentication failed for user {kafka.sasl_username!r} via "
            f"{kafka.sasl_mechanism} on bootstrap {address}: the broker rejected the "
            "credentials (check kafka.sasl_username and the password in kafka.sasl_password, "
            "and that the user exists for this SASL mechanism)"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (
            f"SASL mechanism {kafka.sasl_mechanism} is not enabled on bootstrap {address}; "
            "set kafka.sasl_mechanism to one the listener offers (the broker's "
            "sasl.enabled.mechanisms)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        cafile = str(kafka.ssl_cafile) if kafka.ssl_cafile else "the system CA store"
        reason = exc.verify_message or exc.reason or str(exc)
        hint = (
            "the certificate does not name this host: bootstrap with a name it lists, or set "
            "kafka.ssl_check_hostname=false"
            if "hostname" in str(reason).lower() or "ip address mismatch" in str(reason).lower()
            else f"the broker's certificate is not signed by a CA in {cafile} (kafka.ssl_cafile)"
        )
        return f"TLS verification of the broker certificate failed on {address} ({reason}): {hint}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        hint = ""
        if "certificate required" in str(reason).lower() or "certificate" in str(exc).lower():
            hint = (
                "; the listener may require a client certificate (kafka.ssl_certfile and "
                "kafka.ssl_keyfile) that its CA trusts"
            )
        return f"TLS handshake with {address} failed ({reason}){hint}"
    if isinstance(exc, IllegalSaslStateError):
        return (
            f"{address} does not speak SASL (security_protocol={proto}): the listener is "
            "probably SSL or PLAINTEXT; check kafka.security_protocol and the port"
        )
    if isinstance(exc, KafkaConnectionError) and "closed" in str(exc).lower():
        hint = (
            "the listener may require a client certificate (kafka.ssl_certfile and "
            "kafka.ssl_keyfile), or expect a different security_protocol"
            if proto == "SSL"
            else "the listener may expect TLS or another security_protocol"
            if proto == "SASL_SSL"
            else "the listener may expect TLS or SASL: check kafka.security_protocol"
        )
        return f"{address} closed the connection during set-up (security_protocol={proto}): {hint}"
    if isinstance(exc, TimeoutError):
        return (
            f"no answer from {address} within {kafka.request_timeout_ms} ms "
            f"(security_protocol={proto}); is this the right listener for that protocol?"
        )
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {address}: connection refused (nothing listens there)"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = ""
        if proto in ("SSL", "SASL_SSL"):
            hint = " (a TLS client on a listener without TLS looks like this)"
        return f"cannot connect to {address}: {reason}{hint}"
    return f"cannot set up a connection to {address}: {exc}"


async def explain_connect_failure(kafka: KafkaSettings) -> str | None:
    """Connect once to every bootstrap server exactly as the clients do (TLS, SASL) and say
    why it fails, one line per failing server; ``None`` when every server answers.

    aiokafka only reports "Unable to bootstrap"; this names the cause (wrong password,
    untrusted certificate, missing client certificate, refused port) without the password.
    """
    addresses = [a.strip() for a in kafka.bootstrap_servers.split(",") if a.strip()]
    kwargs = connection_kwargs(kafka, role="diagnose")
    kwargs.pop("bootstrap_servers")
    timeout = kafka.request_timeout_ms / 1000 + 1

    async def probe(address: str) -> str | None:
        host, port = _split_host_port(address)
        try:
            conn = await asyncio.wait_for(create_conn(host, port, **kwargs), timeout)
            try:  # what bootstrap asks next; a listener may refuse it (SASL never done)
                await asyncio.wait_for(conn.send(MetadataRequest([])), timeout)
            finally:
                conn.close()
        except (KafkaError, OSError, TimeoutError) as exc:
            message = _explain(kafka, address, exc)
        else:
            return None
        if kafka.sasl_password is not None:  # belt and braces: never echo the secret
            message = message.replace(kafka.sasl_password.get_secret_value(), "***")
        return message

    problems = [p for p in await asyncio.gather(*map(probe, addresses)) if p]
    return "; ".join(problems) or None


def make_consumer(
    kafka: KafkaSettings,
    *,
    role: str,
    group_id: str | None,
    max_records: int | None = None,
    fetch_max_bytes: int | None = None,
) -> AIOKafkaConsumer:
    """A consumer that commits nothing by itself and reads only committed transactions."""
    extra: dict[str, Any] = {}
    if fetch_max_bytes is not None:
        extra["fetch_max_bytes"] = fetch_max_bytes
    consumer = AIOKafkaConsumer(
        **connection_kwargs(kafka, role=role),
        metadata_max_age_ms=kafka.metadata_max_age_ms,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(1000, kafka.session_timeout_ms // 6),
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        max_poll_records=max_records,
        **extra,
    )
    avoid_hung_brokers(consumer._client, kafka.request_timeout_ms)
    return consumer


TXN_RETRY_BACKOFF_MS = 20
# A transaction's first AddPartitionsToTxn usually reaches the coordinator while it still
# writes the previous transaction's markers (commits run back to back) and is answered
# CONCURRENT_TRANSACTIONS; aiokafka retries that one after the module constant
# BACKOFF_OVERRIDE, 20 ms. The window is a few ms on a healthy broker: at 100 webhooks/s,
# 15-18 % of the resolver's transactions waited those 20 ms, the bulk of hop 2's p90
# (docs/performance.md, Decisions within 50 ms). Retried after 5 ms instead; only that
# answer to that request is affected (other retries keep ``retry_backoff_ms``).
TXN_CONCURRENT_RETRY_MS = 5
aiokafka_sender.BACKOFF_OVERRIDE = TXN_CONCURRENT_RETRY_MS / 1000


def transactional_id(kafka: KafkaSettings, role: str) -> str:
    """``<group>-<role>-<instance_id>``: the same for a restarted or replaced instance (a
    StatefulSet pod keeps its name), so its first transaction fences the predecessor's."""
    return f"{kafka.group_id}-{role}-{kafka.instance_id}"


def make_transactional_producer(kafka: KafkaSettings, *, role: str) -> AIOKafkaProducer:
    """A producer whose transactional id is stable per (group, role, instance).

    A restarted instance with the same id fences its predecessor and aborts the
    predecessor's open transaction at once, instead of blocking read_committed readers
    until the transaction times out.
    """
    producer = AIOKafkaProducer(
        **connection_kwargs(kafka, role=role),
        metadata_max_age_ms=kafka.metadata_max_age_ms,
        enable_idempotence=True,
        acks="all",
        transactional_id=transactional_id(kafka, role),
        transaction_timeout_ms=kafka.transaction_timeout_ms,
        # Transactions run back to back (commit pipeline): the next one often asks the
        # coordinator while it still writes the previous one's markers and is told
        # CONCURRENT_TRANSACTIONS. aiokafka retries that after retry_backoff_ms (100 ms by
        # default) except for a first AddPartitionsToTxn; 20 ms is what the Java client uses.
        retry_backoff_ms=TXN_RETRY_BACKOFF_MS,
        linger_ms=kafka.producer_linger_ms,
        max_batch_size=kafka.producer_max_batch_bytes,
        compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
    )
    avoid_hung_brokers(producer.client, kafka.request_timeout_ms)
    forget_coordinators_on_hung_brokers(producer)
    return producer


def make_producer(kafka: KafkaSettings, *, role: str) -> AIOKafkaProducer:
    """An idempotent, acks=all producer without transactions (the gateway's)."""
    producer = AIOKafkaProducer(
        **connection_kwargs(kafka, role=role),
        metadata_max_age_ms=kafka.metadata_max_age_ms,
        enable_idempotence=True,
        acks="all",
        linger_ms=kafka.producer_linger_ms,
        max_batch_size=kafka.producer_max_batch_bytes,
        compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
    )
    avoid_hung_brokers(producer.client, kafka.request_timeout_ms)
    return producer


def make_admin(kafka: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **connection_kwargs(kafka, role="admin"), metadata_max_age_ms=kafka.metadata_max_age_ms
    )
