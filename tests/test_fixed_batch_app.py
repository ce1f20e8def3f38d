"""Models with a fixed batch dimension behind a batcher of 8, through the whole App.

A model fixed at batch 1 gets each batch as single frames. A model fixed at batch 8 gets partial
batches padded with zeros, and the outputs of the padding rows must never reach a result.
"""

import asyncio
import io
import json

import pytest
from prometheus_client import CollectorRegistry

from stream.app import App
from tests.apps import app_config
from tests.models import fixed_batch_model, write_card

FRAMES_PER_CAMERA = 11  # with two cameras, 22 frames: never a whole number of batches of 8


def run_app(sample_video, model: dict) -> tuple[App, list[dict]]:
    cameras = [
        {"id": camera, "url": str(sample_video), "max_frames": FRAMES_PER_CAMERA} for camera in ("left", "right")
    ]
    config = app_config(cameras, model=model, batching={"max_batch_size": 8, "max_wait_ms": 10})
    output = io.BytesIO()
    app = App(config, registry=CollectorRegistry(), stdout=output)
    asyncio.run(app.run())
    return app, [json.loads(line) for line in output.getvalue().splitlines()]


def top_classes(results: list[dict]) -> dict[tuple[str, int], int]:
    return {(r["camera_id"], r["sequence"]): r["labels"][0]["class_id"] for r in results}


@pytest.fixture(scope="module")
def reference(sample_video):
    """Top classes from the built-in model, whose batch dimension is symbolic."""
    _, results = run_app(sample_video, {})
    return top_classes(results)


@pytest.mark.parametrize("fixed", [1, 8])
def test_fixed_batch_model_in_app(tmp_path, builtin_model, sample_video, reference, result_validator, fixed):
    path = fixed_batch_model(builtin_model, tmp_path / "fixed.onnx", fixed)
    write_card(tmp_path / "fixed.card.yaml", name=f"fixed-{fixed}")

    app, results = run_app(sample_video, {"path": str(path)})
    sample = app.metrics.registry.get_sample_value
    batches = sample("vistream_batcher_batch_size_frames_count")
    single_frame_batches = sample("vistream_batcher_batch_size_frames_bucket", {"le": "1.0"})

    assert app.model.fixed_batch == fixed
    assert len(results) == 2 * FRAMES_PER_CAMERA
    for result in results:
        result_validator.validate(result)
    for camera in ("left", "right"):
        sequences = [r["sequence"] for r in results if r["camera_id"] == camera]
        assert sequences == list(range(1, FRAMES_PER_CAMERA + 1))
    assert top_classes(results) == reference
    assert sample("vistream_batcher_batch_size_frames_sum") == 2 * FRAMES_PER_CAMERA
    assert batches > 2 * FRAMES_PER_CAMERA / 8  # so at least one batch was partial
    assert single_frame_batches < batches  # so at least one batch held several frames
