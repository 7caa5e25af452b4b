"""The transactional producer retries CONCURRENT_TRANSACTIONS on a transaction's first
AddPartitionsToTxn after ``TXN_CONCURRENT_RETRY_MS``, not aiokafka's 20 ms (issue 16)."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka.errors import ConcurrentTransactions
from aiokafka.producer.sender import AddPartitionsToTxnHandler
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.structs import TopicPartition

from connector.kafka import clients


def _handler(txn: TransactionManager, tp: TopicPartition) -> AddPartitionsToTxnHandler:
    sender = SimpleNamespace(_retry_backoff=clients.TXN_RETRY_BACKOFF_MS / 1000, _txn_manager=txn)
    return AddPartitionsToTxnHandler(sender, [tp])


def _concurrent(tp: TopicPartition) -> SimpleNamespace:
    return SimpleNamespace(errors=[(tp.topic, [(tp.partition, ConcurrentTransactions.errno)])])


async def test_first_add_partitions_retries_after_the_short_backoff() -> None:
    txn = TransactionManager("t-1", 60_000)
    txn.set_pid_and_epoch(1, 0)
    txn.begin_transaction()
    tp = TopicPartition("decisions", 0)
    txn.maybe_add_partition_to_txn(tp)
    backoff = _handler(txn, tp).handle_response(_concurrent(tp))
    assert backoff == clients.TXN_CONCURRENT_RETRY_MS / 1000 == 0.005


async def test_later_add_partitions_keep_the_retry_backoff() -> None:
    txn = TransactionManager("t-1", 60_000)
    txn.set_pid_and_epoch(1, 0)
    txn.begin_transaction()
    first, second = TopicPartition("decisions", 0), TopicPartition("decisions", 1)
    txn.maybe_add_partition_to_txn(first)
    txn.partition_added(first)  # the transaction already holds a partition
    txn.maybe_add_partition_to_txn(second)
    backoff = _handler(txn, second).handle_response(_concurrent(second))
    assert backoff == clients.TXN_RETRY_BACKOFF_MS / 1000
