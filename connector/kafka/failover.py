"""Helping aiokafka clients leave a hung broker behind.

A SIGSTOPped (hung) broker keeps its TCP port open: connections succeed, requests time out.
The cluster moves its leaders and coordinators away once the controller fences it (the
broker session timeout, 9 s by default), but the producer keeps each coordinator it found
(transaction and group) until a request to that coordinator fails, and it forgets only the
one that failed. A transaction then pays one ``request_timeout_ms`` per stale coordinator it
meets in a row (EndTxn to the old transaction coordinator, then TxnOffsetCommit to the old
group coordinator on the same broker): 20 s and more of stall with a 10 s timeout.

Worse, aiokafka sends metadata and FindCoordinator requests to a random broker, the hung
one included, and each such pick costs another timeout while the cluster has long failed
over.

``avoid_hung_brokers`` (every client): a broker whose request timed out (or whose connection
set-up took longer than a second and failed) is *suspect* for ``request_timeout_ms``, except
for requests a healthy broker may hold that long on purpose (acks=all produce waiting for a
follower that is about to leave the ISR, JoinGroup/SyncGroup waiting for members); while
other brokers are not, the client does not connect to it (``_get_conn`` answers None, as for
an unreachable broker), so metadata and coordinator look-ups go to the others, and requests
for partitions it still leads fail fast and retry after a metadata refresh.

``forget_coordinators_on_hung_brokers`` (transactional producers): a request that times out
makes the producer forget every coordinator it keeps on that broker; a coordination request
to a broker the latest metadata no longer lists (the controller fenced it) fails at once with
``NodeNotReadyError``, which aiokafka's handlers answer by looking the coordinator up again.

Both also keep ``BROKERS``, the process-wide reachability of each broker: one WARNING when a
broker stops answering, one INFO with the outage's length and failed attempts when it answers
again (aiokafka itself logs every attempt; ``connector.logs.KafkaNoiseFilter`` quiets that).

Relies on aiokafka 0.14 internals (``AIOKafkaClient.send``/``_get_conn``,
``AIOKafkaProducer._sender._coordinators``); when they change, both log a warning and do
nothing. tests/integration/test_cluster.py measures the effect.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.client import ConnectionGroup
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError

log = logging.getLogger(__name__)


@dataclass
class _Outage:
    since: float
    failures: int


class BrokerHealth:
    """Which brokers this process cannot reach now; logs the transitions only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, _Outage] = {}

    def failed(self, broker: str, reason: str) -> None:
        with self._lock:
            outage = self._down.get(broker)
            if outage is not None:
                outage.failures += 1
                return
            self._down[broker] = _Outage(time.monotonic(), 1)
        log.warning(
            "Kafka broker %s unreachable (%s); clients retry, attempts counted until it answers",
            broker,
            reason,
        )

    def answered(self, broker: str) -> None:
        if broker not in self._down:  # the common case: no lock
            return
        with self._lock:
            outage = self._down.pop(broker, None)
        if outage is not None:
            log.info(
                "Kafka broker %s reachable again after %.1fs (%d failed attempts)",
                broker,
                time.monotonic() - outage.since,
                outage.failures,
            )

    def down(self) -> list[str]:
        with self._lock:
            return sorted(self._down)


BROKERS = BrokerHealth()


def _name(client: Any, node_id: Any) -> str:
    broker = client.cluster.broker_metadata(node_id)
    return f"{node_id} ({broker.host}:{broker.port})" if broker is not None else str(node_id)


def forget_coordinators_on_hung_brokers(producer: AIOKafkaProducer) -> None:
    client: Any = producer.client
    sender: Any = getattr(producer, "_sender", None)
    coordinators: dict[Any, int] | None = getattr(sender, "_coordinators", None)
    if coordinators is None or not hasattr(client, "send"):
        log.warning("aiokafka internals changed: coordinator fail-over help disabled")
        return
    send = client.send

    def forget(node_id: int) -> None:
        for kind, node in list(coordinators.items()):
            if node == node_id:
                coordinators.pop(kind, None)

    async def send_forgetting_hung(
        node_id: int, request: Any, *, group: ConnectionGroup = ConnectionGroup.DEFAULT
    ) -> Any:
        if (
            group is ConnectionGroup.COORDINATION
            and client.cluster.broker_metadata(node_id) is None
        ):
            forget(node_id)
            raise NodeNotReadyError(f"node {node_id} left the cluster metadata")
        try:
            return await send(node_id, request, group=group)
        except RequestTimedOutError:
            forget(node_id)
            client.force_metadata_update()
            raise

    client.send = send_forgetting_hung


# Requests a healthy broker may answer only after a wait of its own (not signs of a hang).
_SLOW = frozenset({"ProduceRequest", "JoinGroupRequest", "SyncGroupRequest"})


def avoid_hung_brokers(client: Any, request_timeout_ms: int) -> None:
    """Skip brokers whose requests just timed out while healthy ones are known (see above)."""
    get_conn, send = getattr(client, "_get_conn", None), getattr(client, "send", None)
    if get_conn is None or send is None or not hasattr(client, "cluster"):
        log.warning("aiokafka internals changed: hung-broker avoidance disabled")
        return
    window = request_timeout_ms / 1000
    suspects: dict[int, float] = {}  # node id -> suspect until (monotonic)

    def suspect(node_id: Any) -> bool:
        until = suspects.get(node_id)
        if until is None:
            return False
        if time.monotonic() >= until:
            del suspects[node_id]
            return False
        others = [b.nodeId for b in client.cluster.brokers() if b.nodeId not in suspects]
        return bool(others)

    async def get_conn_avoiding(node_id: Any, **kwargs: Any) -> Any:
        if isinstance(node_id, int) and suspect(node_id):
            return None
        started = time.monotonic()
        conn = await get_conn(node_id, **kwargs)
        if conn is None and isinstance(node_id, int):
            BROKERS.failed(_name(client, node_id), "cannot connect")
            if time.monotonic() - started > 1:
                suspects[node_id] = time.monotonic() + window  # connecting hung, then failed
        return conn

    async def send_marking(node_id: Any, request: Any, **kwargs: Any) -> Any:
        try:
            result = await send(node_id, request, **kwargs)
        except RequestTimedOutError:
            if isinstance(node_id, int) and type(request).__name__.split("_v")[0] not in _SLOW:
                suspects[node_id] = time.monotonic() + window
                BROKERS.failed(_name(client, node_id), f"no answer within {window:.0f}s")
            raise
        except KafkaConnectionError:
            if isinstance(node_id, int):
                BROKERS.failed(_name(client, node_id), "connection lost")
            raise
        suspects.pop(node_id, None)
        if isinstance(node_id, int):
            BROKERS.answered(_name(client, node_id))
        return result

    client._get_conn = get_conn_avoiding
    client.send = send_marking
