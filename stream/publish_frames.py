"""`vistream publish-frames`: publish the frames of a video file to a frames topic.

It writes the format that kafka:// cameras read (see `stream.kafka_frame_format`): one JPEG or
PNG image per message, keyed by camera id, with camera_id, captured_at and sequence headers.
Frames are sent as fast as they are decoded; the tool does not pace them to the video's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from stream.config import CAMERA_ID_PATTERN, KAFKA_TOPIC_PATTERN, derive_camera_id
from stream.errors import ConfigError, SinkError
from stream.kafka_client import describe_connect_error

log = logging.getLogger(__name__)

# Records whose acknowledgement may be outstanding before the tool waits for the oldest.
MAX_IN_FLIGHT = 256
# Largest message the producer sends, in bytes. The broker's own limit (message.max.bytes,
# about 1 MiB by default) may be lower; it then rejects the frame with an error.
MAX_MESSAGE_BYTES = 8_388_608
CONNECT_TIMEOUT_S = 30.0
FLUSH_TIMEOUT_S = 60.0


def add_publish_frames_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "publish-frames",
        help="publish the frames of a video file to a Kafka frames topic, for kafka:// cameras",
        description="Each frame becomes one JPEG or PNG message with camera_id, captured_at and sequence headers.",
    )
    parser.add_argument("video", type=Path, help="video file to read")
    parser.add_argument("--topic", required=True, help="frames topic to publish to")
    parser.add_argument(
        "--bootstrap",
        "--kafka-bootstrap",
        dest="bootstrap",
        default="localhost:9092",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers (default localhost:9092)",
    )
    parser.add_argument("--camera-id", help="camera_id header of every frame (default: derived from the file name)")
    parser.add_argument("--fps", type=float, help="publish at most this many frames per second of video time")
    parser.add_argument("--max-frames", type=int, help="stop after publishing this many frames")
    parser.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="image encoding (default jpeg)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality from 1 to 100 (default 90)")


def check_arguments(args: argparse.Namespace) -> str:
    """Validate the options; return the camera id. Raise ConfigError naming the option to change."""
    if not re.match(KAFKA_TOPIC_PATTERN, args.topic):
        raise ConfigError(f"--topic {args.topic!r} is not a Kafka topic name; use letters, digits, '.', '_' and '-'")
    camera_id = args.camera_id or derive_camera_id(str(args.video))
    if not re.match(CAMERA_ID_PATTERN, camera_id):
        raise ConfigError(f"--camera-id {camera_id!r} is invalid; use letters, digits, '_', '.' and '-' (at most 64)")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"--fps must be greater than 0 (got {args.fps})")
    if args.max_frames is not None and args.max_frames <= 0:
        raise ConfigError(f"--max-frames must be greater than 0 (got {args.max_frames})")
    if not 1 <= args.jpeg_quality <= 100:
        raise ConfigError(f"--jpeg-quality must be from 1 to 100 (got {args.jpeg_quality})")
    return camera_id


def encoded_frames(
    path: Path, image_format: str, jpeg_quality: int, fps: float | None
) -> Iterator[tuple[int, float, bytes]]:
    """Yield (sequence, captured_at, encoded image) per frame due under `fps`. Blocking.

    Sequences count every decoded frame from 1, as for a video file camera, so frames skipped
    by `fps` leave gaps. captured_at is the wall-clock time the frame was decoded.
    """
    import cv2

    from stream.kafka_frame_format import encode_image

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    period_ms = 1000.0 / fps if fps else 0.0
    next_due_ms = 0.0
    sequence = 0
    try:
        while capture.grab():
            sequence += 1
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
            if period_ms and position_ms + 1e-6 < next_due_ms:
                continue
            next_due_ms = max(next_due_ms + period_ms, position_ms)
            ok, image = capture.retrieve()
            if not ok or image is None:
                log.warning("frame %d of %s could not be decoded; skipped", sequence, path)
                continue
            yield sequence, time.time(), encode_image(image, image_format, jpeg_quality)
    finally:
        capture.release()


async def publish_frames(args: argparse.Namespace) -> None:
    """Publish the video's frames and wait for every acknowledgement; raise VistreamError on failure."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from stream.kafka_frame_format import frame_headers
    from stream.sources.video_file import check_video_file

    camera_id = check_arguments(args)
    await asyncio.to_thread(check_video_file, args.video)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap.split(","),
        client_id="vistream-publish-frames",
        acks="all",
        enable_idempotence=True,
        max_request_size=MAX_MESSAGE_BYTES,
    )
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await producer.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        await producer.stop()
        raise SinkError(f"cannot connect to Kafka at {args.bootstrap}: {describe_connect_error(exc)}; check --kafka-bootstrap")

    frames = encoded_frames(args.video, args.format, args.jpeg_quality, args.fps)
    pending: deque[asyncio.Future] = deque()
    published = 0
    try:
        while args.max_frames is None or published < args.max_frames:
            item = await asyncio.to_thread(next, frames, None)
            if item is None:
                break
            sequence, captured_at, image = item
            pending.append(
                await producer.send(
                    args.topic,
                    image,
                    key=camera_id.encode("utf-8"),
                    headers=frame_headers(camera_id, sequence, captured_at),
                    timestamp_ms=int(captured_at * 1000),
                )
            )
            published += 1
            if len(pending) >= MAX_IN_FLIGHT:
                await pending.popleft()
        async with asyncio.timeout(FLUSH_TIMEOUT_S):
            await asyncio.gather(*pending)
    except TimeoutError:
        raise SinkError(
            f"Kafka at {args.bootstrap} did not acknowledge {len(pending)} frames within {FLUSH_TIMEOUT_S:.0f} s"
        ) from None
    except KafkaError as exc:
        raise SinkError(f"publishing to {args.topic} failed: {exc}; check the topic and the broker's limits") from None
    finally:
        await asyncio.to_thread(frames.close)
        await stop_producer(producer)
    log.info("published %d frames of %s to %s as camera %s", published, args.video, args.topic, camera_id)


async def stop_producer(producer) -> None:
    # AIOKafkaProducer.stop waits for every buffered record, without end when no broker responds.
    try:
        async with asyncio.timeout(FLUSH_TIMEOUT_S):
            await producer.stop()
    except TimeoutError:
        log.warning("the Kafka producer did not close within %.0f s; exiting without it", FLUSH_TIMEOUT_S)
