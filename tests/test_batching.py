"""The batcher with real frame slots on a running loop: both batch limits, fairness, slot policies.

A batch leaves when it contains max_batch_size frames or when its oldest frame has waited
max_wait_ms. The only timing bound here is the lone-frame wait; its margin allows for a loaded
two-core machine while still catching a batcher that ignores the deadline.
"""

import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream.batching import Batcher
from stream.frames import Frame, SlotPolicy
from stream.metrics import Metrics

LONE_FRAME_MARGIN_S = 0.15


def make_frame(camera_id: str, sequence: int) -> Frame:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    return Frame(camera_id=camera_id, sequence=sequence, captured_at=time.time(), image=image, decode_s=0.0)


def dropped(metrics: Metrics, camera: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "vistream_source_frames_dropped_total", {"camera": camera, "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def metrics():
    return Metrics(CollectorRegistry())


async def next_batch(batcher: Batcher, timeout_s: float = 5.0) -> list[Frame] | None:
    async with asyncio.timeout(timeout_s):
        return await batcher.next_batch()


@pytest.mark.asyncio
async def test_lone_frame_waits_max_wait(metrics):
    max_wait_ms = 50
    batcher = Batcher(8, max_wait_ms, metrics.frame_dropped)
    slot = batcher.add_slot("a", 16, SlotPolicy.LATEST)

    slot.offer(make_frame("a", 1))
    batch = await next_batch(batcher)
    waited_s = time.monotonic() - batch[0].enqueued_at

    assert [frame.sequence for frame in batch] == [1]
    assert waited_s >= max_wait_ms / 1000 - 0.005
    assert waited_s <= max_wait_ms / 1000 + LONE_FRAME_MARGIN_S


@pytest.mark.asyncio
async def test_late_frame_joins_open_batch(metrics):
    batcher = Batcher(8, 300, metrics.frame_dropped)
    slot = batcher.add_slot("a", 16, SlotPolicy.LATEST)
    loop = asyncio.get_running_loop()

    slot.offer(make_frame("a", 1))
    loop.call_later(0.02, slot.offer, make_frame("a", 2))
    batch = await next_batch(batcher)

    assert [frame.sequence for frame in batch] == [1, 2]


@pytest.mark.asyncio
async def test_burst_fills_batches(metrics):
    max_wait_ms = 10_000
    batcher = Batcher(8, max_wait_ms, metrics.frame_dropped)
    slots = [batcher.add_slot(camera, 16, SlotPolicy.LATEST) for camera in ("a", "b")]

    for sequence in range(1, 11):
        for slot in slots:
            slot.offer(make_frame(slot.camera_id, sequence))
    started = time.monotonic()
    full = [await next_batch(batcher), await next_batch(batcher)]
    full_elapsed_s = time.monotonic() - started
    for slot in slots:
        slot.close()
    rest = await next_batch(batcher)
    end = await next_batch(batcher)

    assert [len(batch) for batch in full] == [8, 8]
    # Full batches leave at once; waiting for the deadline would take 10 s.
    assert full_elapsed_s < max_wait_ms / 1000 / 2
    assert len(rest) == 4
    assert end is None


@pytest.mark.asyncio
async def test_slots_served_round_robin(metrics):
    batcher = Batcher(6, 10_000, metrics.frame_dropped)
    busy = batcher.add_slot("busy", 16, SlotPolicy.LATEST)
    quiet = batcher.add_slot("quiet", 16, SlotPolicy.LATEST)
    rare = batcher.add_slot("rare", 16, SlotPolicy.LATEST)

    for sequence in range(1, 9):
        busy.offer(make_frame("busy", sequence))
    for sequence in range(1, 3):
        quiet.offer(make_frame("quiet", sequence))
    rare.offer(make_frame("rare", 1))
    batch = await next_batch(batcher)

    assert [frame.camera_id for frame in batch] == ["busy", "quiet", "rare", "busy", "quiet", "busy"]
    assert [frame.sequence for frame in batch if frame.camera_id == "busy"] == [1, 2, 3]


@pytest.mark.asyncio
async def test_latest_policy_counts_superseded(metrics):
    batcher = Batcher(8, 10_000, metrics.frame_dropped)
    slot = batcher.add_slot("live", 2, SlotPolicy.LATEST)

    for sequence in range(1, 6):
        slot.offer(make_frame("live", sequence))
    slot.close()
    batch = await next_batch(batcher)

    assert [frame.sequence for frame in batch] == [4, 5]
    assert dropped(metrics, "live", "superseded") == 3


@pytest.mark.asyncio
async def test_block_policy_loses_nothing(metrics):
    frames = 200
    batcher = Batcher(8, 5, metrics.frame_dropped)
    slot = batcher.add_slot("file", 2, SlotPolicy.BLOCK)
    loop = asyncio.get_running_loop()
    producer_done = threading.Event()

    def produce() -> None:
        # The same hand-over as a video file reader thread: wait on the loop for space.
        for sequence in range(1, frames + 1):
            asyncio.run_coroutine_threadsafe(slot.put(make_frame("file", sequence)), loop).result()
        loop.call_soon_threadsafe(slot.close)
        producer_done.set()

    async def consume() -> tuple[list[int], int]:
        received: list[int] = []
        fullest = 0
        while (batch := await next_batch(batcher)) is not None:
            fullest = max(fullest, len(slot.frames))
            received.extend(frame.sequence for frame in batch)
            await asyncio.sleep(0.001)  # a model slower than the reader
        return received, fullest

    _, (received, fullest) = await asyncio.gather(asyncio.to_thread(produce), consume())

    assert producer_done.is_set()
    assert received == list(range(1, frames + 1))
    assert fullest <= 2
    assert dropped(metrics, "file", "superseded") == 0
