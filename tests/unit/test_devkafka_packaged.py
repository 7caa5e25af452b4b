"""An installed package (no checkout) finds the dev broker's Maven pom in its package data."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector import devkafka


def test_without_a_checkout_the_packaged_pom_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devkafka, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = devkafka._deploy_dir()
    assert found == tmp_path / "cache" / "hitl-connector" / "kafka"
    checkout_pom = Path(devkafka.__file__).resolve().parents[1] / "deploy" / "kafka" / "pom.xml"
    assert (found / "pom.xml").read_bytes() == checkout_pom.read_bytes()
    assert (found / "log4j2.properties").is_file()
    # Without Maven or KAFKA_HOME the error says what to install.
    with pytest.raises(devkafka.DevKafkaError, match="install Maven"):
        devkafka.resolve_distribution(deploy_dir=found, env={"PATH": str(tmp_path)})
