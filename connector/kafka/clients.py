"""Building aiokafka clients with the connector's safe defaults (design §9).

Owns: connection and security settings, and the defaults that aiokafka gets wrong for us
(idempotence, no auto-commit, earliest, read_committed). Does not own committing
(``kafka.checkpoint``) or topic management (``kafka.admin``).
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from connector.config import KafkaSettings


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    ctx.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile:
        ctx.load_cert_chain(
            str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
        )
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
    return AIOKafkaConsumer(
        **connection_kwargs(kafka, role=role),
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


def make_transactional_producer(kafka: KafkaSettings, *, role: str) -> AIOKafkaProducer:
    """A producer whose transactional id is stable per (group, role, instance).

    A restarted instance with the same id fences its predecessor and aborts the
    predecessor's open transaction at once, instead of blocking read_committed readers
    until the transaction times out.
    """
    return AIOKafkaProducer(
        **connection_kwargs(kafka, role=role),
        enable_idempotence=True,
        acks="all",
        transactional_id=f"{kafka.group_id}-{role}-{kafka.instance_id}",
        transaction_timeout_ms=kafka.transaction_timeout_ms,
        linger_ms=kafka.producer_linger_ms,
        max_batch_size=kafka.producer_max_batch_bytes,
        compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
    )


def make_producer(kafka: KafkaSettings, *, role: str) -> AIOKafkaProducer:
    """An idempotent, acks=all producer without transactions (the gateway's)."""
    return AIOKafkaProducer(
        **connection_kwargs(kafka, role=role),
        enable_idempotence=True,
        acks="all",
        linger_ms=kafka.producer_linger_ms,
        max_batch_size=kafka.producer_max_batch_bytes,
        compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
    )


def make_admin(kafka: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_kwargs(kafka, role="admin"))
