"""Where the development broker's jars and Java come from, without starting anything."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from connector import devkafka
from connector.devkafka import (
    DEPLOY_DIR,
    DevKafka,
    DevKafkaError,
    find_java,
    new_cluster_id,
    parse_java_major,
    resolve_distribution,
)


@pytest.fixture
def deploy_dir(tmp_path: Path) -> Path:
    """A copy of deploy/kafka without resolved jars."""
    target = tmp_path / "deploy-kafka"
    target.mkdir()
    for name in ("pom.xml", "log4j2.properties"):
        shutil.copy(DEPLOY_DIR / name, target / name)
    return target


@pytest.fixture
def empty_path(tmp_path: Path) -> str:
    """A PATH on which no program (mvn, java) can be found."""
    bin_dir = tmp_path / "empty-bin"
    bin_dir.mkdir()
    return str(bin_dir)


def test_without_maven_or_kafka_home_the_error_names_what_to_install(
    deploy_dir: Path, empty_path: str
) -> None:
    with pytest.raises(DevKafkaError) as caught:
        resolve_distribution(deploy_dir=deploy_dir, env={"PATH": empty_path})

    message = str(caught.value)
    assert "install Maven (apt-get install maven)" in message
    assert "set KAFKA_HOME to an unpacked Apache Kafka 4.x" in message


def test_kafka_home_libs_are_used_when_maven_is_absent(
    deploy_dir: Path, empty_path: str, tmp_path: Path
) -> None:
    kafka_home = tmp_path / "kafka_2.13-4.1.1"
    (kafka_home / "libs").mkdir(parents=True)
    (kafka_home / "libs" / "kafka_2.13-4.1.1.jar").write_bytes(b"")

    dist = resolve_distribution(
        deploy_dir=deploy_dir, env={"PATH": empty_path, "KAFKA_HOME": str(kafka_home)}
    )

    assert dist.source == "kafka_home"
    assert dist.classpath == f"{kafka_home / 'libs'}/*"
    assert dist.log4j_config == deploy_dir / "log4j2.properties"


def test_kafka_home_without_kafka_jars_is_refused(
    deploy_dir: Path, empty_path: str, tmp_path: Path
) -> None:
    (tmp_path / "not-kafka" / "libs").mkdir(parents=True)

    with pytest.raises(DevKafkaError, match="no libs/kafka_2"):
        resolve_distribution(
            deploy_dir=deploy_dir,
            env={"PATH": empty_path, "KAFKA_HOME": str(tmp_path / "not-kafka")},
        )


def test_kafka_3_in_kafka_home_is_refused(
    deploy_dir: Path, empty_path: str, tmp_path: Path
) -> None:
    (tmp_path / "old" / "libs").mkdir(parents=True)
    (tmp_path / "old" / "libs" / "kafka_2.13-3.9.0.jar").write_bytes(b"")

    with pytest.raises(DevKafkaError, match=r"Kafka 4\.x is required"):
        resolve_distribution(
            deploy_dir=deploy_dir, env={"PATH": empty_path, "KAFKA_HOME": str(tmp_path / "old")}
        )


def test_lib_resolved_from_the_current_pom_is_reused_without_maven(
    deploy_dir: Path, empty_path: str
) -> None:
    lib = deploy_dir / "lib"
    lib.mkdir()
    digest = hashlib.sha256((deploy_dir / "pom.xml").read_bytes()).hexdigest()
    (lib / ".resolved").write_text(digest + "\n")

    dist = resolve_distribution(deploy_dir=deploy_dir, env={"PATH": empty_path})

    assert (dist.source, dist.lib_dir) == ("maven", lib)


def test_a_changed_pom_invalidates_the_resolved_lib(
    deploy_dir: Path, empty_path: str, tmp_path: Path
) -> None:
    lib = deploy_dir / "lib"
    lib.mkdir()
    (lib / ".resolved").write_text("digest-of-an-older-pom\n")
    fake_mvn = tmp_path / "fake-bin" / "mvn"
    fake_mvn.parent.mkdir()
    fake_mvn.write_text("#!/bin/sh\necho resolving >&2\nexit 3\n")
    fake_mvn.chmod(0o755)

    with pytest.raises(DevKafkaError, match=r"Maven could not resolve .*exit 3"):
        resolve_distribution(deploy_dir=deploy_dir, env={"PATH": str(fake_mvn.parent)})
    assert (lib / ".resolved").read_text() == "digest-of-an-older-pom\n"


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ("something else", None),
    ],
)
def test_java_major_version_is_parsed(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def test_missing_java_says_what_to_install(empty_path: str) -> None:
    with pytest.raises(DevKafkaError, match=r"apt-get install openjdk-17-jre-headless"):
        find_java({"PATH": empty_path})


def test_old_java_is_refused(tmp_path: Path) -> None:
    java = tmp_path / "jdk11" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    java.chmod(0o755)

    with pytest.raises(DevKafkaError, match=r"is Java 11; Kafka 4 needs Java 17\+"):
        find_java({"JAVA_HOME": str(tmp_path / "jdk11"), "PATH": ""})


def test_cluster_ids_are_22_chars_and_never_look_like_a_flag() -> None:
    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_single_node_properties_use_one_replica_for_internal_topics(tmp_path: Path) -> None:
    broker = DevKafka(tmp_path, port=19092, controller_port=19093, extra_properties={"a": "b"})
    props = dict(
        line.split("=", 1)
        for line in broker._render_properties().splitlines()
        if line and not line.startswith("#")
    )

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["a"] == "b"
    assert devkafka.DEFAULT_HEAP == "512m"
