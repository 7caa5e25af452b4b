"""Transactions that fail mid-commit, with batches staged behind them in the commit pipeline.

Real broker, sandbox and gateway; the connector in-process with every role. Some of each
role's transactions are made to fail for real: their records are produced inside the
transaction, which is then aborted on the broker, as when a broker goes away between produce
and commit. Every batch not committed (the failed one and those staged after it) must be
processed again: still exactly one request and one decision per event, against the faithful
sandbox (no Idempotency-Key), and without a lookup: the process knows what it created.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from connector.kafka.checkpoint import Checkpoint, CheckpointError
from connector.records import OutRecord
from hitl_sandbox import SandboxServer
from tests.integration.harness import counted, decision_settings
from tests.integration.test_decision_path import reviewer, run_and_check

pytestmark = pytest.mark.kafka

# A role's producing transactions that abort. Each abort makes the role commit its rewound
# batches again, so a run that reaches transaction 2 reaches 3 and 4 as well: all three aborts
# happen however the commit pipeline merged batches before (it merges what is staged, so how
# many transactions 600 events take follows timing; 4 to 13 were seen).
FAIL_AT = {2, 3, 4}


async def test_aborted_transactions_rewind_every_uncommitted_batch(
    kafka_bootstrap: str, connector_apps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: collections.Counter[str] = collections.Counter()
    aborted: collections.Counter[str] = collections.Counter()
    real_commit = Checkpoint.commit

    async def flaky_commit(
        self: Checkpoint, records: Sequence[OutRecord], offsets: Mapping[TopicPartition, int]
    ) -> None:
        group = self._group_id
        if records:  # only transactions that produce something are counted and failed
            calls[group] += 1
        if not records or calls[group] not in FAIL_AT:
            await real_commit(self, records, offsets)
            return
        producer = self._producer
        await producer.begin_transaction()
        for future in await self._send_batches(records):
            await future  # the records are on the broker, inside the open transaction
        await producer.abort_transaction()
        aborted[group] += 1
        raise CheckpointError("injected: transaction aborted after its records were produced")

    monkeypatch.setattr(Checkpoint, "commit", flaky_commit)
    with SandboxServer(reviewer()) as sandbox:
        # Both roles take at most 20 records a batch: several batches a role, so several
        # transactions and batches staged behind a failing one.
        settings = decision_settings(
            kafka_bootstrap, sandbox.url, batch={"max_records": 20}, resolver={"max_records": 20}
        )
        app = await connector_apps(settings, "all")
        figures = await run_and_check(kafka_bootstrap, sandbox, settings, app, 600)
        assert app.submitter is not None
        reused = counted(app, "recovered_requests", outcome="reused")
    group = settings.kafka.group_id
    print(
        f"\ncommit-failures: aborted={dict(aborted)} calls={dict(calls)} "
        f"duplicate_requests={figures['duplicate_requests']} "
        f"extra_api_calls={figures['lookup_calls']} reused_without_a_call={reused} {figures}"
    )
    # Both roles went through failed transactions and still gave one decision per event.
    assert aborted[group] == len(FAIL_AT)
    assert aborted[f"{group}-resolver"] == len(FAIL_AT)
    assert figures["decisions"] == 600 and figures["duplicate_requests"] == 0
    # The rewound batches' requests were known in memory: adopted without a single lookup.
    assert reused > 0 and figures["lookup_calls"] == 0


async def test_fenced_producers_are_replaced_and_nothing_is_lost(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    """Another producer takes each role's transactional id mid-stream (what the broker does
    to a transaction that outlived ``transaction_timeout_ms`` looks the same to the client):
    the role replaces its producer and reads every uncommitted batch again."""
    with SandboxServer(reviewer()) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url, batch={"max_records": 20})
        app = await connector_apps(settings, "all")
        assert app.submitter is not None and app.resolver is not None
        roles = {"submitter": app.submitter, "resolver": app.resolver}
        kafka = settings.kafka

        async def fence_when_busy() -> None:
            while not all(role.batches >= 2 for role in roles.values()):
                await asyncio.sleep(0.05)
            for name in roles:
                usurper = AIOKafkaProducer(
                    bootstrap_servers=kafka_bootstrap,
                    transactional_id=f"{kafka.group_id}-{name}-{kafka.instance_id}",
                )
                await usurper.start()  # init_transactions bumps the epoch: the role is fenced
                await usurper.stop()

        fencer = asyncio.create_task(fence_when_busy())
        figures = await run_and_check(kafka_bootstrap, sandbox, settings, app, 600)
        await fencer
        renewals = {name: role.checkpoint.renewals for name, role in roles.items()}
        reused = counted(app, "recovered_requests", outcome="reused")
    print(
        f"\nfenced: renewals={renewals} duplicate_requests={figures['duplicate_requests']} "
        f"extra_api_calls={figures['lookup_calls']} reused_without_a_call={reused} {figures}"
    )
    assert all(n >= 1 for n in renewals.values()), renewals
    assert figures["decisions"] == 600 and figures["duplicate_requests"] == 0
    assert figures["lookup_calls"] == 0
