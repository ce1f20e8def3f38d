"""Collects frames from all cameras' slots into batches for the model.

A batch is sent when it contains `max_batch_size` frames or when its oldest frame has waited
`max_wait_ms` since it entered its slot, whichever comes first (the dynamic batching policy of
Triton Inference Server). Slots are served round-robin, one frame per turn, so a busy camera
cannot starve a quiet one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

from stream.frames import Frame, FrameSlot, SlotPolicy


class Batcher:
    """Owns the cameras' slots and hands out batches. Runs on the event loop only."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, on_drop: Callable[[str, str], None]):
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._on_drop = on_drop
        self._slots: list[FrameSlot] = []
        self._ready: deque[FrameSlot] = deque()
        self._wakeup = asyncio.Event()

    def add_slot(self, camera_id: str, capacity: int, policy: SlotPolicy) -> FrameSlot:
        slot = FrameSlot(camera_id, capacity, policy, on_ready=self._mark_ready, on_drop=self._on_drop)
        self._slots.append(slot)
        return slot

    @property
    def queued_frames(self) -> int:
        return sum(len(slot.frames) for slot in self._slots)

    def _mark_ready(self, slot: FrameSlot) -> None:
        if not slot.queued:
            slot.queued = True
            self._ready.append(slot)
        self._wakeup.set()

    def _finished(self) -> bool:
        return all(slot.closed and not slot.frames for slot in self._slots)

    def _pop_ready_frame(self) -> Frame | None:
        while self._ready:
            slot = self._ready.popleft()
            slot.queued = False
            frame = slot.take()
            if slot.frames:
                self._mark_ready(slot)
            if frame is not None:
                return frame
        return None

    async def _next_frame(self, deadline: float | None) -> Frame | None:
        """Return the next frame, or None when the deadline passes or every slot is finished."""
        while True:
            frame = self._pop_ready_frame()
            if frame is not None:
                return frame
            if self._finished():
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return None

    async def next_batch(self) -> list[Frame] | None:
        """Wait for the next batch; return None once every slot is closed and drained."""
        first = await self._next_frame(deadline=None)
        if first is None:
            return None

        batch = [first]
        deadline = first.enqueued_at + self.max_wait_s
        while len(batch) < self.max_batch_size:
            frame = self._next_frame_now() if time.monotonic() >= deadline else await self._next_frame(deadline)
            if frame is None:
                break
            batch.append(frame)
        return batch

    def _next_frame_now(self) -> Frame | None:
        # Past the deadline, frames that are already waiting still join the batch: taking them
        # costs no latency.
        return self._pop_ready_frame()
