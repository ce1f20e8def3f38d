"""kafka:// cameras against the real broker of scripts/kafka.sh: dead letters, commits and restarts.

Guards at-least-once consumption: a frame's offset is committed only after its result (or its
dead letter) is acknowledged, a bad message never stops the stream, and a consumer that stops
mid-stream and starts again misses no frame.
"""

import asyncio
import io
import json
import struct
import time

import cv2
import numpy as np
import onnx
import pytest
from aiokafka import AIOKafkaProducer
from onnx import helper, numpy_helper
from prometheus_client import CollectorRegistry

from stream.app import App
from stream.config import KafkaResultsConfig
from stream.errors import SinkError
from stream.kafka_frame_format import frame_headers
from tests.apps import app_config
from tests.kafka_support import (  # noqa: F401 (fixtures)
    BOOTSTRAP,
    committed_offset,
    count_copies,
    create_topic,
    header,
    kafka_broker,
    read_topic,
    running_broker,
    unique_topic,
)

pytestmark = pytest.mark.kafka

MAX_MESSAGE_BYTES = 16_384


def single_frame_classifier(target):
    """An 8x8 classifier that runs a batch of one frame and fails on any larger batch.

    Its Reshape has a fixed batch of 1, which the model loader's one-frame probe accepts.
    """
    weights = np.ones((192, 4), dtype=np.float32) / 192
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weights"], ["logits"]),
        ],
        "single-frame",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.array([1, 192], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(target))
    return target


def jpeg(width: int = 64, height: int = 48, noise: bool = False) -> bytes:
    if noise:
        image = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        image = np.full((height, width, 3), (30, 120, 200), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buffer.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR that declare width x height, followed by no image data."""
    ihdr = struct.pack(">II5B", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\x00\x00\x00\x00"


async def publish(topic: str, messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value, headers in messages:
            await producer.send_and_wait(topic, value, key=b"gate-1", headers=headers)
    finally:
        await producer.stop()


def kafka_camera_config(
    tiny_model, frames_topic: str, results_topic: str, group: str, max_message_bytes: int = 8_388_608, **camera
):
    return app_config(
        [{"id": "lobby", "url": f"kafka://{frames_topic}", **camera}],
        model=tiny_model,
        kafka={
            "bootstrap_servers": BOOTSTRAP,
            "results": {"topic": results_topic},
            "frames": {
                "group_id": group,
                "dead_letter_topic": f"{frames_topic}.dead-letters",
                "max_message_bytes": max_message_bytes,
                "commit_interval_ms": 200,
            },
        },
    )


async def run_until_done(config, timeout_s: float = 60.0) -> App:
    app = App(config, registry=CollectorRegistry())
    await asyncio.wait_for(app.run(), timeout_s)
    return app


@pytest.mark.asyncio
async def test_dead_letters_keep_stream_going(kafka_broker, tiny_model):
    frames_topic, results_topic, group = unique_topic("frames"), unique_topic("results"), unique_topic("group")
    good = jpeg()
    oversize = jpeg(256, 256, noise=True)
    assert len(oversize) > MAX_MESSAGE_BYTES
    messages = [
        (good, frame_headers("gate-1", 1, time.time())),
        (b"these bytes are not an image", frame_headers("gate-1", 2, time.time())),
        (good, frame_headers("gate-1", 3, time.time())),
        (oversize, frame_headers("gate-1", 4, time.time())),
        (png_header_only(100_000, 100_000), frame_headers("gate-1", 5, time.time())),
        (good, [("camera_id", b"not a camera id!"), ("sequence", b"6")]),
        (good, frame_headers("gate-1", 7, time.time())),
    ]
    await publish(frames_topic, messages)

    config = kafka_camera_config(
        tiny_model, frames_topic, results_topic, group, max_message_bytes=MAX_MESSAGE_BYTES, max_frames=3
    )
    app = await run_until_done(config)
    results = [json.loads(record.value) for record in await read_topic(results_topic, expected=3)]
    dead_letters = await read_topic(f"{frames_topic}.dead-letters", expected=4)

    assert [(r["camera_id"], r["sequence"]) for r in results] == [("gate-1", 1), ("gate-1", 3), ("gate-1", 7)]
    assert [r["source"]["offset"] for r in results] == [0, 2, 6]
    assert all(r["source"] == {"topic": frames_topic, "partition": 0, "offset": r["source"]["offset"]} for r in results)
    assert [header(d, "dead_letter.reason") for d in dead_letters] == [
        "corrupt",
        "oversize",
        "too_large_dimensions",
        "invalid_header",
    ]
    assert [header(d, "dead_letter.offset") for d in dead_letters] == ["1", "3", "4", "5"]
    assert all(header(d, "dead_letter.topic") == frames_topic for d in dead_letters)
    assert dead_letters[0].value == b"these bytes are not an image"
    assert header(dead_letters[0], "sequence") == "2"
    assert "max_message_bytes" in header(dead_letters[1], "dead_letter.detail")
    for reason in ("corrupt", "oversize", "too_large_dimensions", "invalid_header"):
        dropped = app.metrics.registry.get_sample_value(
            "vistream_source_frames_dropped_total", {"camera": "lobby", "reason": reason}
        )
        assert dropped == 1, reason
    assert await committed_offset(group, frames_topic) == 7


@pytest.mark.asyncio
async def test_restarted_consumer_resumes_without_gaps(kafka_broker, tiny_model, run_cli, sample_video):
    frames_topic, results_topic, group = unique_topic("frames"), unique_topic("results"), unique_topic("group")
    published = run_cli(
        "publish-frames", str(sample_video), "--topic", frames_topic, "--bootstrap", BOOTSTRAP,
        "--camera-id", "gate-1", "--max-frames", "60",
    )
    assert published.returncode == 0, published.stderr

    first = await run_until_done(kafka_camera_config(tiny_model, frames_topic, results_topic, group, max_frames=25))
    committed_after_first = await committed_offset(group, frames_topic)
    second = await run_until_done(kafka_camera_config(tiny_model, frames_topic, results_topic, group, max_frames=35))
    records = await read_topic(results_topic, expected=60)
    results = [json.loads(record.value) for record in records]
    frames = await read_topic(frames_topic, expected=1, extra_wait_s=0)

    sequences, duplicates = count_copies([r["sequence"] for r in results])
    assert first.pipeline.analysed == 25
    assert second.pipeline.analysed == 35
    assert committed_after_first == 25
    assert sequences == set(range(1, 61))
    assert duplicates == 0
    assert {r["camera_id"] for r in results} == {"gate-1"}
    assert await committed_offset(group, frames_topic) == 60
    assert frames[0].key == b"gate-1"
    assert header(frames[0], "sequence") == "1"
    assert header(frames[0], "captured_at").endswith("Z")


@pytest.mark.asyncio
async def test_stdout_results_commit_frames(kafka_broker, tiny_model):
    frames_topic, group = unique_topic("frames"), unique_topic("group")
    await publish(frames_topic, [(jpeg(), frame_headers("gate-1", n, time.time())) for n in range(1, 6)])
    config = kafka_camera_config(tiny_model, frames_topic, unique_topic("results"), group, max_frames=5)
    config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"results": KafkaResultsConfig()})})
    written = io.BytesIO()

    app = App(config, registry=CollectorRegistry(), stdout=written)
    await asyncio.wait_for(app.run(), 60)
    results = [json.loads(line) for line in written.getvalue().splitlines()]

    assert [r["sequence"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["source"]["offset"] for r in results] == [0, 1, 2, 3, 4]
    assert await committed_offset(group, frames_topic) == 5


@pytest.mark.asyncio
async def test_undelivered_result_stops_without_commit(kafka_broker, tiny_model):
    frames_topic, results_topic, group = unique_topic("frames"), unique_topic("results"), unique_topic("group")
    await create_topic(results_topic, config={"max.message.bytes": "200"})
    await publish(frames_topic, [(jpeg(), frame_headers("gate-1", n, time.time())) for n in range(1, 4)])

    with pytest.raises(SinkError, match=r"offset 0 was not delivered \(rejected\)"):
        await run_until_done(kafka_camera_config(tiny_model, frames_topic, results_topic, group))

    assert await committed_offset(group, frames_topic) is None


@pytest.mark.asyncio
async def test_inference_error_frames_become_dead_letters(kafka_broker, tiny_model, tmp_path):
    frames_topic, results_topic, group = unique_topic("frames"), unique_topic("results"), unique_topic("group")
    model = single_frame_classifier(tmp_path / "single.onnx")
    failing_model = {**tiny_model, "path": str(model)}
    await publish(frames_topic, [(jpeg(), frame_headers("gate-1", n, time.time())) for n in range(1, 5)])
    config = kafka_camera_config(failing_model, frames_topic, results_topic, group, max_frames=4)
    config = config.model_copy(update={"batching": config.batching.model_copy(update={"max_wait_ms": 5000.0})})

    app = await run_until_done(config)
    dead_letters = await read_topic(f"{frames_topic}.dead-letters", expected=4)

    assert app.pipeline.analysed == 0
    assert [header(d, "dead_letter.reason") for d in dead_letters] == ["inference_error"] * 4
    assert [header(d, "dead_letter.offset") for d in dead_letters] == ["0", "1", "2", "3"]
    assert all(d.key == b"gate-1" and not d.value for d in dead_letters)
    dropped = app.metrics.registry.get_sample_value(
        "vistream_source_frames_dropped_total", {"camera": "lobby", "reason": "inference_error"}
    )
    assert dropped == 4
    assert await committed_offset(group, frames_topic) == 4
