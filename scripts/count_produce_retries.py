"""Count aiokafka's produce retries by error on a healthy broker or cluster (no faults).

Runs every role in-process against the sandbox's auto-reviewer under steady load and counts
aiokafka's "Got error produce response on topic-partition …, retrying. Error: …" lines by
error and by topic, per minute of load. Answers "does our transaction pattern make healthy
brokers answer NotEnoughReplicas?" (docs/operations.md, Kafka clusters).

    python scripts/count_produce_retries.py --brokers 1 --seconds 60
    python scripts/count_produce_retries.py --brokers 3 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402

from connector.app import ConnectorApp  # noqa: E402
from connector.devcluster import DevCluster  # noqa: E402
from connector.devkafka import DevKafka  # noqa: E402
from hitl_sandbox import SandboxServer  # noqa: E402
from tests.integration.harness import decision_settings  # noqa: E402
from tests.integration.test_decision_path import events, reviewer  # noqa: E402

RETRY = re.compile(r"topic='([^']+)'.*retrying\. Error: <class 'aiokafka\.errors\.(\w+)'>")


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.by_error: collections.Counter[str] = collections.Counter()
        self.by_topic: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        match = RETRY.search(record.getMessage())
        if match:
            self.by_error[match.group(2)] += 1
            self.by_topic[match.group(1).split("-")[0]] += 1


async def run(brokers: int, seconds: float, rate: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="retries-"))
    kafka: DevKafka | DevCluster = DevKafka(data, port=0) if brokers == 1 else DevCluster(data)
    await kafka.start()
    counter = Counter()
    logging.getLogger("aiokafka").addHandler(counter)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        with SandboxServer(reviewer(review_delay_max_ms=1000)) as sandbox:
            settings = decision_settings(kafka.bootstrap_servers, sandbox.url)
            app = ConnectorApp(settings, "all")
            await app.start()
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
            await producer.start()
            started, sent = time.monotonic(), 0
            try:
                while time.monotonic() - started < seconds:
                    for key, value in events(rate // 4, f"r{sent}"):
                        await producer.send(settings.topics.input, value, key=key)
                        sent += 1
                    await asyncio.sleep(0.25)
                await producer.flush()
                await asyncio.sleep(5)
                assert app.metrics is not None
                sample = app.metrics.registry.get_sample_value
                commits = {
                    role: sample(
                        "hitl_connector_kafka_transactions_total",
                        {"role": role, "result": "commit"},
                    )
                    for role in ("submitter", "resolver")
                }
                batch_ms = {
                    role: round(
                        1000
                        * (sample("hitl_connector_batch_duration_seconds_sum", {"role": role}) or 0)
                        / (
                            sample("hitl_connector_batch_duration_seconds_count", {"role": role})
                            or 1
                        ),
                        1,
                    )
                    for role in ("submitter", "resolver")
                }
            finally:
                await producer.stop()
                await app.stop()
    finally:
        await kafka.stop()
    minutes = seconds / 60
    total = sum(counter.by_error.values())
    print(
        f"brokers={brokers} events={sent} seconds={seconds:.0f} commits={commits} "
        f"mean_batch_ms={batch_ms} "
        f"produce_retries={total} per_minute={total / minutes:.1f} "
        f"by_error={dict(counter.by_error)} by_topic={dict(counter.by_topic)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=20, help="events per second")
    args = parser.parse_args()
    asyncio.run(run(args.brokers, args.seconds, args.rate))


if __name__ == "__main__":
    main()
