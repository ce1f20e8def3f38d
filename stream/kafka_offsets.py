"""Done frames per partition, and the offset that a consumer may commit.

A frame is done when its result, or its dead letter, has been acknowledged. Frames finish out
of order (a dead letter can be acknowledged before the result of an earlier frame), so the
offset to commit is one past the last frame of the longest run of done frames from the start.
Offsets are tracked as fetched, not as a range of integers, because Kafka offsets can have
gaps (transaction markers, compacted records).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

Partition = tuple[str, int]  # topic, partition


@dataclass
class _PartitionOffsets:
    fetched: deque[int] = field(default_factory=deque)  # not done, or done after a frame that is not
    outstanding: set[int] = field(default_factory=set)  # the same offsets, for lookups
    done: set[int] = field(default_factory=set)
    next_commit: int | None = None  # one past the last frame of the done run
    committed: int | None = None


class OffsetTracker:
    """Fetched and done offsets of one consumer. Runs on the event loop only."""

    def __init__(self) -> None:
        self._partitions: dict[Partition, _PartitionOffsets] = {}

    def fetched(self, partition: Partition, offset: int) -> None:
        """Record a fetched frame.

        An offset at or below the last one fetched means the consumer's position went back (it
        reads again from the last commit), so the partition's frames are tracked afresh.
        """
        state = self._partitions.setdefault(partition, _PartitionOffsets())
        if state.fetched and offset <= state.fetched[-1]:
            state = self._partitions[partition] = _PartitionOffsets(committed=state.committed)
        state.fetched.append(offset)
        state.outstanding.add(offset)

    def done(self, partition: Partition, offset: int) -> bool:
        """Mark a fetched frame done; return False for a frame this tracker does not hold.

        A frame is unknown after its partition was revoked, or when a second result for it
        (a duplicate) arrives; both are ignored.
        """
        state = self._partitions.get(partition)
        if state is None or offset not in state.outstanding:
            return False
        state.done.add(offset)
        while state.fetched and state.fetched[0] in state.done:
            first = state.fetched.popleft()
            state.done.discard(first)
            state.outstanding.discard(first)
            state.next_commit = first + 1
        return True

    def to_commit(self) -> dict[Partition, int]:
        """Return the offset to commit for each partition that advanced since its last commit."""
        return {
            partition: state.next_commit
            for partition, state in self._partitions.items()
            if state.next_commit is not None and state.next_commit != state.committed
        }

    def committed(self, offsets: dict[Partition, int]) -> None:
        for partition, offset in offsets.items():
            state = self._partitions.get(partition)
            if state is not None:
                state.committed = offset

    def last_committed(self, partition: Partition) -> int | None:
        state = self._partitions.get(partition)
        return state.committed if state is not None else None

    def forget(self, partitions: set[Partition]) -> None:
        """Stop tracking partitions, for example after a rebalance revoked them."""
        for partition in partitions:
            self._partitions.pop(partition, None)

    def not_done(self) -> dict[Partition, tuple[int, int]]:
        """Return, per partition, the first frame that is not done and how many are not done."""
        return {
            partition: (state.fetched[0], len(state.fetched) - len(state.done))
            for partition, state in self._partitions.items()
            if state.fetched
        }
