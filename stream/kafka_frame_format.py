"""The frames topic format, and the checks a message passes before it is decoded.

One message is one JPEG or PNG image. Three optional headers describe it, each a UTF-8 string:

- `camera_id`: the camera's id (letters, digits, `_`, `.`, `-`; at most 64); default: the id of
  the kafka:// camera that reads the topic;
- `captured_at`: the capture time, RFC 3339 with a time zone, e.g. `2026-01-02T03:04:05.123456Z`;
  default: the message timestamp;
- `sequence`: the frame's number in the camera's stream, an integer from 0; default: the offset.

The image size is read from the PNG IHDR chunk or the JPEG SOF segment before anything is
decoded, so a small message that declares a huge image never reaches the decoder.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import cv2
import numpy as np

from stream.config import CAMERA_ID_PATTERN
from stream.results import utc_iso

CAMERA_ID_HEADER = "camera_id"
CAPTURED_AT_HEADER = "captured_at"
SEQUENCE_HEADER = "sequence"

# Headers of a dead letter, next to the original message's own headers.
REASON_HEADER = "dead_letter.reason"
DETAIL_HEADER = "dead_letter.detail"
SOURCE_TOPIC_HEADER = "dead_letter.topic"
SOURCE_PARTITION_HEADER = "dead_letter.partition"
SOURCE_OFFSET_HEADER = "dead_letter.offset"

# Reasons a frame goes to the dead-letter topic; each is also a reason of the
# vistream_source_frames_dropped_total metric.
CORRUPT = "corrupt"
OVERSIZE = "oversize"
TOO_LARGE_DIMENSIONS = "too_large_dimensions"
INVALID_HEADER = "invalid_header"
INFERENCE_ERROR = "inference_error"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
# Start-of-frame markers, which carry the image size: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-RST7, SOI.
JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
JPEG_EOI = 0xD9
JPEG_SOS = 0xDA

_CAMERA_ID = re.compile(CAMERA_ID_PATTERN)


class InvalidFrame(Exception):
    """A message that cannot become a frame; `reason` is one of the dead-letter reasons."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FrameLimits:
    max_message_bytes: int
    max_image_pixels: int


@dataclass
class DecodedFrame:
    camera_id: str
    sequence: int
    captured_at: float  # UTC, seconds since the epoch
    image: np.ndarray  # BGR, uint8
    decode_s: float


def image_dimensions(data: bytes) -> tuple[str, int, int]:
    """Return (format, width, height) from a PNG or JPEG header; raise InvalidFrame(corrupt) otherwise."""
    if data.startswith(PNG_SIGNATURE):
        return ("png", *_png_dimensions(data))
    if data.startswith(JPEG_START):
        return ("jpeg", *_jpeg_dimensions(data))
    raise InvalidFrame(CORRUPT, "not a JPEG or PNG image (unknown signature)")


def _png_dimensions(data: bytes) -> tuple[int, int]:
    # The IHDR chunk comes first: length (4), type (4), width (4), height (4), all big-endian.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidFrame(CORRUPT, "PNG without an IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise InvalidFrame(CORRUPT, f"JPEG marker expected at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (JPEG_EOI, JPEG_SOS):
            break
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in JPEG_SOF_MARKERS:
            # Segment: length (2), sample precision (1), height (2), width (2).
            if position + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length
    raise InvalidFrame(CORRUPT, "JPEG without a start-of-frame segment")


def read_frame(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    limits: FrameLimits,
    *,
    default_camera_id: str,
    default_sequence: int,
    default_captured_at: float,
) -> DecodedFrame:
    """Check and decode one message of a frames topic; raise InvalidFrame with the dead-letter reason.

    The checks run cheapest first: size, headers, declared image size, then the decode itself.
    Blocking: call it from a worker thread.
    """
    if not value:
        raise InvalidFrame(CORRUPT, "the message has no value")
    if len(value) > limits.max_message_bytes:
        raise InvalidFrame(
            OVERSIZE, f"{len(value)} bytes, over kafka.frames.max_message_bytes {limits.max_message_bytes}"
        )
    camera_id, sequence, captured_at = read_headers(
        headers, default_camera_id, default_sequence, default_captured_at
    )

    image_format, width, height = image_dimensions(value)
    if width == 0 or height == 0:
        raise InvalidFrame(CORRUPT, f"{image_format} header declares an empty {width}x{height} image")
    if width * height > limits.max_image_pixels:
        raise InvalidFrame(
            TOO_LARGE_DIMENSIONS,
            f"{image_format} header declares {width}x{height} pixels, over kafka.frames.max_image_pixels "
            f"{limits.max_image_pixels}",
        )

    started = time.perf_counter()
    image = cv2.imdecode(np.frombuffer(value, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidFrame(CORRUPT, f"OpenCV cannot decode the {image_format} image")
    return DecodedFrame(camera_id, sequence, captured_at, image, time.perf_counter() - started)


def read_headers(
    headers: Iterable[tuple[str, bytes]], default_camera_id: str, default_sequence: int, default_captured_at: float
) -> tuple[str, int, float]:
    """Return (camera_id, sequence, captured_at) from the headers, with defaults for those absent."""
    values: dict[str, str] = {}
    for name, raw in headers:
        if name in (CAMERA_ID_HEADER, SEQUENCE_HEADER, CAPTURED_AT_HEADER):
            try:
                values[name] = raw.decode("utf-8")
            except (UnicodeDecodeError, AttributeError):
                raise InvalidFrame(INVALID_HEADER, f"header {name} is not UTF-8 text") from None

    camera_id = values.get(CAMERA_ID_HEADER, default_camera_id)
    if not _CAMERA_ID.match(camera_id):
        raise InvalidFrame(
            INVALID_HEADER, f"header camera_id {camera_id[:80]!r} is not a camera id (letters, digits, _ . -; 1-64)"
        )
    sequence = default_sequence
    if SEQUENCE_HEADER in values:
        text = values[SEQUENCE_HEADER]
        if not text.isascii() or not text.isdigit():
            raise InvalidFrame(INVALID_HEADER, f"header sequence {text[:40]!r} is not an integer from 0")
        sequence = int(text)
    captured_at = default_captured_at
    if CAPTURED_AT_HEADER in values:
        captured_at = parse_captured_at(values[CAPTURED_AT_HEADER])
    return camera_id, sequence, captured_at


def parse_captured_at(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidFrame(
            INVALID_HEADER, f"header captured_at {text[:40]!r} is not an RFC 3339 time with a time zone"
        )
    return moment.timestamp()


def frame_headers(camera_id: str, sequence: int, captured_at: float) -> list[tuple[str, bytes]]:
    """Return the headers of a frames topic message."""
    return [
        (CAMERA_ID_HEADER, camera_id.encode("utf-8")),
        (CAPTURED_AT_HEADER, utc_iso(captured_at).encode("ascii")),
        (SEQUENCE_HEADER, str(sequence).encode("ascii")),
    ]


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 90) -> bytes:
    """Encode a BGR image as JPEG or PNG for a frames topic. Blocking."""
    if image_format == "jpeg":
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    elif image_format == "png":
        ok, buffer = cv2.imencode(".png", image)
    else:
        raise ValueError(f"unknown image format {image_format!r}; use jpeg or png")
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {image.shape} image as {image_format}")
    return buffer.tobytes()


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]], reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Return the original headers plus the reason and the original message's position."""
    return [
        *original,
        (REASON_HEADER, reason.encode("ascii")),
        (DETAIL_HEADER, detail.encode("utf-8")),
        (SOURCE_TOPIC_HEADER, topic.encode("utf-8")),
        (SOURCE_PARTITION_HEADER, str(partition).encode("ascii")),
        (SOURCE_OFFSET_HEADER, str(offset).encode("ascii")),
    ]
