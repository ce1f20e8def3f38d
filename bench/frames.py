"""Decoded frames of the sample clip, held in memory so that measurements exclude decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class DecodedClip:
    path: Path
    images: list[np.ndarray]  # BGR, uint8, height x width x 3
    decode_fps: float  # frames decoded per second by one thread

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the frames."""
        height, width = self.images[0].shape[:2]
        return width, height


def decode_clip(path: Path) -> DecodedClip:
    """Decode every frame of a video file with OpenCV's FFmpeg backend, as VideoFileSource does."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    images = []
    started = time.perf_counter()
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            images.append(image)
    finally:
        capture.release()
    elapsed_s = time.perf_counter() - started
    if not images:
        raise RuntimeError(f"no frames could be decoded from {path}")
    return DecodedClip(path, images, len(images) / elapsed_s)
