"""OffsetTracker: a kafka:// camera commits one past the last frame of the unbroken run of done frames.

Guards at-least-once consumption: committing past a frame whose result is still in flight
would lose that frame if the process died before the result was delivered.
"""

from stream.kafka_offsets import OffsetTracker

FRAMES = ("frames", 0)
OTHER = ("frames", 1)


def fetch(tracker: OffsetTracker, partition, offsets) -> None:
    for offset in offsets:
        tracker.fetched(partition, offset)


def test_out_of_order_commits_unbroken_run():
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, range(5))

    tracker.done(FRAMES, 1)
    tracker.done(FRAMES, 2)
    nothing_yet = tracker.to_commit()
    tracker.done(FRAMES, 0)
    after_first = tracker.to_commit()
    tracker.done(FRAMES, 4)
    still_three = tracker.to_commit()

    assert nothing_yet == {}
    assert after_first == {FRAMES: 3}
    assert still_three == {FRAMES: 3}


def test_offset_gaps_do_not_block_commits():
    # Transaction markers and compaction leave offsets that are never fetched.
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, (0, 1, 5, 6))

    for offset in (6, 5, 1, 0):
        tracker.done(FRAMES, offset)

    assert tracker.to_commit() == {FRAMES: 7}


def test_committed_offsets_not_offered_again():
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, range(3))
    tracker.done(FRAMES, 0)

    tracker.committed(tracker.to_commit())
    unchanged = tracker.to_commit()
    tracker.done(FRAMES, 1)

    assert unchanged == {}
    assert tracker.to_commit() == {FRAMES: 2}


def test_unknown_repeated_offsets_ignored():
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, range(2))

    assert tracker.done(FRAMES, 0) is True
    assert tracker.done(FRAMES, 0) is False  # a second result for the same frame
    assert tracker.done(FRAMES, 9) is False
    assert tracker.done(OTHER, 0) is False
    assert tracker.to_commit() == {FRAMES: 1}


def test_partitions_independent_and_forgettable():
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, range(2))
    fetch(tracker, OTHER, range(10, 12))
    tracker.done(FRAMES, 0)
    tracker.done(OTHER, 10)
    tracker.done(OTHER, 11)

    both = tracker.to_commit()
    tracker.forget({OTHER})

    assert both == {FRAMES: 1, OTHER: 12}
    assert tracker.to_commit() == {FRAMES: 1}
    assert tracker.done(OTHER, 11) is False


def test_position_reset_tracks_afresh():
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, range(4))
    tracker.done(FRAMES, 0)
    tracker.committed(tracker.to_commit())

    fetch(tracker, FRAMES, (1, 2))  # read again from the last commit
    tracker.done(FRAMES, 1)
    tracker.done(FRAMES, 2)

    assert tracker.to_commit() == {FRAMES: 3}
    assert tracker.not_done() == {}


def test_not_done_names_first_unfinished_frame():
    tracker = OffsetTracker()
    fetch(tracker, FRAMES, range(6))
    tracker.done(FRAMES, 0)
    tracker.done(FRAMES, 3)

    assert tracker.not_done() == {FRAMES: (1, 4)}
