"""A video file as a camera: decoded in its own thread, optionally looped and sampled."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import cv2

from stream.config import CameraConfig
from stream.errors import SourceError
from stream.frames import Frame, FrameSlot
from stream.health import Health
from stream.metrics import Metrics

log = logging.getLogger(__name__)


def check_video_file(path: Path) -> None:
    """Raise SourceError, naming the fix, unless `path` is a readable file OpenCV can decode."""
    if not path.exists():
        raise SourceError(f"video file {path} not found; check the camera url (or --source)")
    if not path.is_file():
        raise SourceError(f"video source {path} is not a file; pass a video file or an rtsp:// URL")
    if not os.access(path, os.R_OK):
        raise SourceError(f"video file {path} is not readable; fix its permissions")

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened() or not capture.grab():
            raise SourceError(
                f"{path} is not a video that OpenCV's FFmpeg backend can decode; "
                "pass a video file such as MP4 (H.264) or an rtsp:// URL"
            )
    finally:
        capture.release()


class VideoFileSource:
    """Reads a file as fast as the pipeline takes frames; nothing is dropped.

    Every frame is decoded (`grab`), but only frames due under `fps` are converted to BGR
    (`retrieve`) and analysed. A file has no absolute capture time, so `captured_at` is the
    wall-clock time the frame was decoded and `pts_ms` carries the file's own timestamp. A
    looped file's timestamps keep rising across passes.

    The camera state goes from connecting (opening the file) to streaming (once the first
    frame is in the slot) to stopped (end of file, max_frames, stop or a failure). With
    `health` the state also feeds /readyz; without it only the metric is set.
    """

    def __init__(self, camera: CameraConfig, slot: FrameSlot, metrics: Metrics, health: Health | None = None):
        self.camera = camera
        self.camera_id = camera.camera_id
        self.path = Path(camera.url)
        self.slot = slot
        self.metrics = metrics
        self._set_state = health.set_camera_state if health else metrics.set_camera_state
        self._stop = threading.Event()

    def check(self) -> None:
        check_video_file(self.path)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._read_all, loop)
        finally:
            self.slot.close()
            self._set_state(self.camera_id, "stopped")

    def _read_all(self, loop: asyncio.AbstractEventLoop) -> None:
        log.info("camera %s: reading %s", self.camera_id, self.path)
        self._set_state(self.camera_id, "connecting")
        sequence = 0
        analysed = 0
        offset_s = 0.0
        period_ms = 1000.0 / self.camera.fps if self.camera.fps else 0.0
        next_due_ms = 0.0

        while not self._stop.is_set():
            capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
            fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
            last_ms = 0.0
            try:
                while not self._stop.is_set():
                    started = time.perf_counter()
                    if not capture.grab():
                        break
                    position_ms = capture.get(cv2.CAP_PROP_POS_MSEC) + offset_s * 1000.0
                    last_ms = position_ms
                    sequence += 1
                    if period_ms and position_ms + 1e-6 < next_due_ms:
                        continue
                    next_due_ms = max(next_due_ms + period_ms, position_ms)

                    ok, image = capture.retrieve()
                    if not ok or image is None:
                        self.metrics.frame_dropped(self.camera_id, "corrupt")
                        log.warning("camera %s: frame %d could not be decoded; skipped", self.camera_id, sequence)
                        continue
                    frame = Frame(
                        camera_id=self.camera_id,
                        sequence=sequence,
                        captured_at=time.time(),
                        image=image,
                        decode_s=time.perf_counter() - started,
                        pts_ms=position_ms,
                    )
                    asyncio.run_coroutine_threadsafe(self.slot.put(frame), loop).result()
                    self.metrics.frame_received(self.camera_id)
                    if analysed == 0:
                        self._set_state(self.camera_id, "streaming")
                    analysed += 1
                    if self.camera.max_frames and analysed >= self.camera.max_frames:
                        return
            finally:
                capture.release()

            if not self.camera.loop or sequence == 0:
                break
            # The next pass continues the timeline one frame interval after the last frame.
            offset_s = (last_ms + 1000.0 / fps) / 1000.0
        if self._stop.is_set():
            log.info("camera %s: stopped reading %s after %d frames", self.camera_id, self.path, sequence)
        else:
            log.info("camera %s: end of %s after %d frames", self.camera_id, self.path, sequence)
