"""Consumer lag for the metrics: end offset minus committed offset, per assigned partition.

The end offset is the consumer's last seen high watermark (refreshed by every fetch, so it
stays current while the consumer is idle); the committed offset is the group's. Partitions
that move away lose their series.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from connector.metrics import Metrics


class LagTracker:
    """Updates ``hitl_connector_consumer_lag`` for one role's consumer."""

    def __init__(self, metrics: Metrics, role: str) -> None:
        self._m = metrics
        self._role = role
        self._shown: set[TopicPartition] = set()

    async def update(self, consumer: AIOKafkaConsumer | None) -> None:
        assigned: set[TopicPartition] = set(consumer.assignment()) if consumer else set()
        for tp in self._shown - assigned:
            self._m.consumer_lag.remove(self._role, tp.topic, str(tp.partition))
        self._shown &= assigned
        if consumer is None:
            return
        for tp in assigned:
            # A rebalance during an await below may take partitions away (highwater asserts).
            if tp not in consumer.assignment():
                continue
            end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                committed = await consumer.committed(tp)
            except KafkaError:
                continue
            lag = end - (committed or 0)
            self._m.consumer_lag.labels(self._role, tp.topic, str(tp.partition)).set(max(0, lag))
            self._shown.add(tp)
