"""Broker reachability is logged on transitions only (connector.kafka.failover.BrokerHealth)."""

from __future__ import annotations

import logging

import pytest

from connector.kafka.failover import BrokerHealth


def test_one_warning_when_a_broker_goes_one_info_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = BrokerHealth()
    with caplog.at_level(logging.INFO, logger="connector.kafka.failover"):
        for _ in range(300):
            health.failed("2 (127.0.0.1:9093)", "cannot connect")
        assert health.down() == ["2 (127.0.0.1:9093)"]
        for _ in range(5):
            health.answered("2 (127.0.0.1:9093)")
        health.answered("1 (127.0.0.1:9092)")  # never down: nothing to say
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(records) == 2, records
    assert records[0][0] == "WARNING" and "broker 2 (127.0.0.1:9093) unreachable" in records[0][1]
    assert records[1][0] == "INFO" and "reachable again after" in records[1][1]
    assert "(300 failed attempts)" in records[1][1]
    assert health.down() == []
