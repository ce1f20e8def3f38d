"""The frames topic format: header checks and image sizes read before decoding.

Guards the dead-letter reasons: a message is rejected for the right reason, and one that
declares a huge image is rejected from its header, before OpenCV allocates anything.
"""

import struct
import time

import cv2
import numpy as np
import pytest

from stream.kafka_frame_format import (
    CORRUPT,
    INVALID_HEADER,
    OVERSIZE,
    TOO_LARGE_DIMENSIONS,
    FrameLimits,
    InvalidFrame,
    encode_image,
    frame_headers,
    image_dimensions,
    read_frame,
)

LIMITS = FrameLimits(max_message_bytes=1_000_000, max_image_pixels=1920 * 1080)


def image(width: int = 96, height: int = 54) -> np.ndarray:
    gradient = np.linspace(0, 255, width * height * 3, dtype=np.float32).reshape(height, width, 3)
    return gradient.astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">II5B", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\x00\x00\x00\x00"


def read(value, headers=(), limits=LIMITS):
    return read_frame(
        value, list(headers), limits, default_camera_id="lobby", default_sequence=42, default_captured_at=1000.0
    )


def reason_of(value, headers=(), limits=LIMITS) -> str:
    with pytest.raises(InvalidFrame) as raised:
        read(value, headers, limits)
    return raised.value.reason


@pytest.mark.parametrize(
    ("extension", "params", "name"),
    [
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90], "jpeg"),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "jpeg"),
        (".png", [], "png"),
    ],
)
def test_image_dimensions_match_encoded_image(extension, params, name):
    ok, buffer = cv2.imencode(extension, image(96, 54), params)
    assert ok

    assert image_dimensions(buffer.tobytes()) == (name, 96, 54)


def test_good_frame_uses_header_values():
    captured_at = 1_767_000_000.25
    value = encode_image(image(), "jpeg")

    frame = read(value, frame_headers("gate-1", 7, captured_at))

    assert frame.camera_id == "gate-1"
    assert frame.sequence == 7
    assert frame.captured_at == pytest.approx(captured_at, abs=1e-6)
    assert frame.image.shape == (54, 96, 3)


def test_missing_headers_use_defaults():
    frame = read(encode_image(image(), "png"))

    assert (frame.camera_id, frame.sequence, frame.captured_at) == ("lobby", 42, 1000.0)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", CORRUPT),
        (None, CORRUPT),
        (b"GIF89a not supported", CORRUPT),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 8, CORRUPT),  # no start-of-frame segment
        (png_header_only(0, 10), CORRUPT),
        (png_header_only(640, 480), CORRUPT),  # a valid header but no image data
        (png_header_only(100_000, 100_000), TOO_LARGE_DIMENSIONS),
    ],
)
def test_bad_images_rejected_with_reason(value, reason):
    assert reason_of(value) == reason


def test_huge_declared_jpeg_rejected_before_decoding():
    value = bytearray(encode_image(image(), "jpeg"))
    sof = next(i for i in range(2, len(value) - 1) if value[i] == 0xFF and value[i + 1] in (0xC0, 0xC2))
    value[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)

    assert reason_of(bytes(value)) == TOO_LARGE_DIMENSIONS


def test_oversize_message_rejected():
    value = encode_image(image(), "png")
    limits = FrameLimits(max_message_bytes=len(value) - 1, max_image_pixels=10**9)

    assert reason_of(value, limits=limits) == OVERSIZE


@pytest.mark.parametrize(
    "headers",
    [
        [("camera_id", b"has spaces")],
        [("camera_id", b"\xff\xfe")],
        [("sequence", b"-1")],
        [("sequence", b"seven")],
        [("captured_at", b"2026-01-02T03:04:05")],  # no time zone
        [("captured_at", b"yesterday")],
    ],
)
def test_invalid_headers_rejected(headers):
    assert reason_of(encode_image(image(), "jpeg"), headers) == INVALID_HEADER


def test_frame_headers_round_trip():
    now = time.time()

    headers = dict(frame_headers("gate-1", 3, now))

    assert headers["camera_id"] == b"gate-1"
    assert headers["sequence"] == b"3"
    assert headers["captured_at"].endswith(b"Z")
