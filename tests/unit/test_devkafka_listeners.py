"""DevKafka's extra listeners and SCRAM users, as written into server.properties (no JVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.devkafka import DevKafka, DevKafkaError, ExtraListener, ScramUser


def _props(broker: DevKafka) -> dict[str, str]:
    lines = broker._render_properties().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_extra_listeners_are_bound_advertised_and_mapped(tmp_path: Path) -> None:
    broker = DevKafka(
        tmp_path,
        port=19092,
        controller_port=19093,
        extra_listeners=[
            ExtraListener("SSL", "SSL", port=19094),
            ExtraListener("SASL_SSL", "SASL_SSL", port=19095),
            ExtraListener("PROXIED", "PLAINTEXT", port=19096, advertised_port=29096),
        ],
        scram_users=[ScramUser("u1", "p1"), ScramUser("u2", "p2", "SCRAM-SHA-512")],
    )
    props = _props(broker)

    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,SSL://127.0.0.1:19094,SASL_SSL://127.0.0.1:19095,"
        "PROXIED://127.0.0.1:19096,CONTROLLER://127.0.0.1:19093"
    )
    assert props["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:19092,SSL://127.0.0.1:19094,SASL_SSL://127.0.0.1:19095,"
        "PROXIED://127.0.0.1:29096"
    )
    assert props["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,PROXIED:PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512"
    module = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    assert props["listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config"] == module
    assert props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"] == module
    assert broker.listener_address("PROXIED") == "127.0.0.1:29096"
    assert broker.listener_bound_address("PROXIED") == "127.0.0.1:19096"
    assert broker.listener_address("SSL") == "127.0.0.1:19094"
    assert broker.bootstrap_servers == "127.0.0.1:19092"
    assert ScramUser("u2", "p2", "SCRAM-SHA-512").format_argument() == (
        "SCRAM-SHA-512=[name=u2,password=p2]"
    )


def test_without_extra_listeners_the_properties_are_as_before(tmp_path: Path) -> None:
    props = _props(DevKafka(tmp_path, port=19092, controller_port=19093))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["listener.security.protocol.map"] == "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert "sasl.enabled.mechanisms" not in props


def test_extra_properties_override_the_sasl_defaults(tmp_path: Path) -> None:
    broker = DevKafka(
        tmp_path,
        port=1,
        controller_port=2,
        extra_listeners=[ExtraListener("SASL_PLAINTEXT", "SASL_PLAINTEXT", port=3)],
        extra_properties={"sasl.enabled.mechanisms": "PLAIN"},
    )
    assert _props(broker)["sasl.enabled.mechanisms"] == "PLAIN"


def test_ports_are_chosen_at_first_start_and_kept(tmp_path: Path) -> None:
    listener = ExtraListener("PROXIED", "PLAINTEXT", advertised_port=0)
    broker = DevKafka(tmp_path, extra_listeners=[listener])
    with pytest.raises(DevKafkaError, match="start"):
        broker.listener_address("PROXIED")
    assert listener.port == 0, "the caller's listener object is not modified"
    broker._choose_ports()  # what start() does before writing server.properties
    bound, advertised = broker.listener_bound_address("PROXIED"), broker.listener_address("PROXIED")
    assert bound != advertised and broker.port not in (0, broker.controller_port)
    broker._choose_ports()  # a restart keeps them
    assert (broker.listener_bound_address("PROXIED"), broker.listener_address("PROXIED")) == (
        bound,
        advertised,
    )


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: ExtraListener("ssl", "SSL"), "A-Z"),
        (lambda: ExtraListener("CONTROLLER", "SSL"), "taken"),
        (lambda: ScramUser("a,b", "p"), "must not contain"),
        (lambda: ScramUser("a", "p]"), "must not contain"),
    ],
)
def test_bad_listener_or_user_is_refused(build: object, needle: str) -> None:
    with pytest.raises(DevKafkaError, match=needle):
        build()  # type: ignore[operator]


def test_listener_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(DevKafkaError, match="unique"):
        DevKafka(tmp_path, extra_listeners=[ExtraListener("A", "SSL"), ExtraListener("A", "SSL")])


def test_a_scram_password_is_not_in_the_repr() -> None:
    assert "hunter2" not in repr(ScramUser("u", "hunter2"))
