"""The gateway sink's murmur2 must pick the partition aiokafka's (Java's) partitioner picks."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from connector.kafka.partitioner import murmur2


def test_murmur2_matches_aiokafka_for_every_tail_length() -> None:
    rng = random.Random(7)
    partitioner = DefaultPartitioner()
    keys = [rng.randbytes(rng.randrange(0, 80)) for _ in range(20_000)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", "réq-ü-42".encode()]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key)
        for count in (1, 6, 7, 12):
            parts = list(range(count))
            assert parts[(murmur2(key) & 0x7FFFFFFF) % count] == partitioner(key, parts, parts)
