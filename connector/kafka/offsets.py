"""Which offset a partition may commit, given per-record outcomes. Pure; no I/O.

The rule: a partition commits up to (not including) its first record that is not finished.
Records after that gap are processed again later, so nothing past a gap is ever committed,
whatever order the work completed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def committable_offset(offsets: Sequence[int], finished: Iterable[bool]) -> int | None:
    """The offset to commit for one partition's batch, or None when nothing may be committed.

    ``offsets`` are the batch's record offsets in fetch order; ``finished`` says for each
    whether its outcome is recorded. Kafka commits the *next* offset to read.
    """
    last: int | None = None
    for offset, done in zip(offsets, finished, strict=True):
        if not done:
            break
        last = offset
    return None if last is None else last + 1


def first_unfinished(offsets: Sequence[int], finished: Iterable[bool]) -> int | None:
    """The offset of the first unfinished record, where the partition must seek back to."""
    for offset, done in zip(offsets, finished, strict=True):
        if not done:
            return offset
    return None
