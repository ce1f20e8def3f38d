"""Frames and the per-camera slot that buffers them between a source and the batcher."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np


@dataclass(slots=True)
class Frame:
    """One decoded image and where and when it came from."""

    camera_id: str
    sequence: int
    captured_at: float  # UTC, seconds since the epoch
    image: np.ndarray  # BGR, uint8, height x width x 3
    decode_s: float
    pts_ms: float | None = None  # presentation timestamp within the stream, where it has one
    enqueued_at: float = 0.0  # time.monotonic() when it entered its slot
    origin: dict[str, Any] | None = None  # e.g. Kafka topic, partition and offset, copied into the result
    # The configured camera that read the frame, for metric labels, where camera_id comes from the
    # frame itself (a Kafka message header) and so is not from the config's closed set of ids.
    configured_camera_id: str | None = None


class SlotPolicy(str, Enum):
    """The policy of a full slot for a new frame."""

    LATEST = "latest"  # live cameras: the oldest frame is dropped (counted) and the new one kept
    BLOCK = "block"  # files and Kafka: the reader waits for space, so the slot drops nothing


@dataclass(eq=False)
class FrameSlot:
    """A bounded buffer of one camera's frames, drained by the batcher.

    Methods run on the event loop only; capture threads reach them through the loop's
    call_soon_threadsafe / run_coroutine_threadsafe.
    """

    camera_id: str
    capacity: int
    policy: SlotPolicy
    on_ready: Callable[["FrameSlot"], None]
    on_drop: Callable[[str, str], None]
    frames: deque[Frame] = field(default_factory=deque)
    closed: bool = False
    queued: bool = False  # owned by the batcher: the slot is in its ready queue
    _space: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: Frame) -> None:
        """Add a frame without waiting; when full, drop the oldest frame and count it as superseded."""
        if self.closed:
            return
        if len(self.frames) >= self.capacity:
            self.frames.popleft()
            self.on_drop(self.camera_id, "superseded")
        frame.enqueued_at = time.monotonic()
        self.frames.append(frame)
        self.on_ready(self)

    async def put(self, frame: Frame) -> None:
        """Add a frame, waiting while the slot is full; a closed slot discards it."""
        await self.wait_for_space()
        if self.closed:
            return
        frame.enqueued_at = time.monotonic()
        self.frames.append(frame)
        self.on_ready(self)

    async def wait_for_space(self) -> None:
        """Wait until the slot has room for a frame or is closed."""
        while len(self.frames) >= self.capacity and not self.closed:
            self._space.clear()
            await self._space.wait()

    def take(self) -> Frame | None:
        if not self.frames:
            return None
        frame = self.frames.popleft()
        self._space.set()
        return frame

    def close(self) -> None:
        """Mark the camera finished; frames already buffered are still analysed."""
        self.closed = True
        self._space.set()
        self.on_ready(self)
