"""Metrics: /metrics exposes exactly the documented table, and series never grow with traffic.

docs/metrics.md is the contract for dashboards and alerts, so the first test reads its table
and compares it with a real scrape of a running App. The scrape requests OpenMetrics, as
Prometheus does, because only that format keeps the info and counter types.
"""

import asyncio
import io
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from detectors.runner import Model, ModelSpec
from stream.batching import Batcher
from stream.frames import Frame, SlotPolicy
from stream.health import Health
from stream.metrics import CAMERA_STATES, DROP_REASONS, PUBLISH_OUTCOMES, Metrics
from stream.pipeline import Pipeline
from stream.sinks.jsonl import JsonLinesSink
from tests.apps import app_config, http_get, running_app, wait_for_status

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
METRICS_DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
TABLE_ROW = re.compile(r"^\| `(vistream_\w+)` \| (\w+) \|\s*([\w, ]*?)\s*\|")
LABEL_LINE = re.compile(r"^- `(reason|state|outcome)`: (.*)$")
CLOSED_LABELS = {"reason": set(DROP_REASONS), "state": set(CAMERA_STATES), "outcome": set(PUBLISH_OUTCOMES)}


def documented_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """Return {metric name: (type, label names)} from the table in docs/metrics.md."""
    table = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if match := TABLE_ROW.match(line):
            name, kind, labels = match.groups()
            table[name] = (kind, frozenset(label.strip() for label in labels.split(",") if label.strip()))
    return table


def documented_label_values() -> dict[str, set[str]]:
    """Return {label: values} from the closed sets listed in docs/metrics.md."""
    listed = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if match := LABEL_LINE.match(line):
            listed[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    return listed


def exposed_metrics(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Return {metric name as documented: (type, label names)} from an OpenMetrics body."""
    exposed = {}
    for family in text_string_to_metric_families(text):
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        label_sets = {frozenset(sample.labels) - {"le"} for sample in family.samples}
        assert len(label_sets) == 1, f"{family.name} mixes label sets {label_sets}"
        exposed[family.name + suffix] = (family.type, label_sets.pop())
    return exposed


def label_values(text: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if label in sample.labels
    }


@pytest.mark.asyncio
async def test_metrics_match_documented_table(sample_video, tiny_model):
    path, card = Path(tiny_model["path"]), Path(tiny_model["card"])
    cameras = [{"id": camera, "url": str(sample_video), "loop": True} for camera in ("gate-1", "gate-2")]
    config = app_config(cameras, model={"path": str(path), "card": str(card)})

    async with running_app(config) as app:
        await wait_for_status(app.http_port, "/readyz", 200)
        reply = await asyncio.to_thread(http_get, app.http_port, "/metrics", OPENMETRICS)
        plain = await asyncio.to_thread(http_get, app.http_port, "/metrics")
    text = reply.body.decode("utf-8")
    documented = documented_metrics()

    assert reply.status == 200
    assert reply.content_type.startswith("application/openmetrics-text")
    assert plain.status == 200
    assert plain.content_type.startswith("text/plain")
    assert b"vistream_pipeline_frames_analysed_total" in plain.body
    assert len(documented) == 16
    assert exposed_metrics(text) == documented
    assert label_values(text, "camera") == {"gate-1", "gate-2"}
    assert label_values(text, "sink") == {"stdout"}
    for label, allowed in CLOSED_LABELS.items():
        assert label_values(text, label) == allowed
    assert label_values(text, "provider") == {"CPUExecutionProvider"}
    assert label_values(text, "name") == {"tiny"}


def test_documented_label_values_match_code():
    assert documented_label_values() == CLOSED_LABELS


class FlakyModel(Model):
    """The real Model, but one batch in ten raises, as a broken GPU driver or a bad frame might."""

    def __init__(self, spec: ModelSpec, error_rate: float, seed: int):
        super().__init__(spec)
        self.error_rate = error_rate
        self._random = random.Random(seed)

    def infer(self, images):
        if self._random.random() < self.error_rate:
            raise RuntimeError("injected inference failure")
        return super().infer(images)


def count_series(registry: CollectorRegistry) -> int:
    return sum(len(family.samples) for family in registry.collect())


@pytest.mark.asyncio
async def test_series_bounded_after_10000_frames(tiny_model):
    frames = 10_000
    path, card = Path(tiny_model["path"]), Path(tiny_model["card"])
    rng = random.Random(7)
    metrics = Metrics(CollectorRegistry())
    health = Health(metrics, liveness_timeout_s=5.0)
    batcher = Batcher(8, 2, metrics.frame_dropped)
    policies = {"a": SlotPolicy.BLOCK, "b": SlotPolicy.BLOCK, "c": SlotPolicy.LATEST, "d": SlotPolicy.LATEST}
    slots = {camera: batcher.add_slot(camera, 4, policy) for camera, policy in policies.items()}
    model = FlakyModel(ModelSpec(path=path, card_path=card), error_rate=0.1, seed=11)
    sink = JsonLinesSink(None, metrics, stream=io.BytesIO())
    await sink.start()
    pipeline = Pipeline(batcher, model, sink, metrics, top_k=3)
    for camera in slots:
        metrics.register_camera(camera)
    metrics.register_sink(sink.name)
    metrics.model.info({"name": model.name, "version": model.version, "provider": model.provider})
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    series_before = count_series(metrics.registry)

    async def feed() -> None:
        for index in range(frames):
            camera = "abcd"[index % 4]
            sequence = index // 4 + 1
            if index % 100 == 0:
                health.set_camera_state(camera, rng.choice(CAMERA_STATES))
                metrics.reconnects.labels(camera).inc()
            if rng.random() < 0.05:
                metrics.frame_dropped(camera, "corrupt")
                continue
            frame = Frame(camera, sequence, time.time(), image, decode_s=rng.random() / 100)
            metrics.frame_received(camera)
            if policies[camera] is SlotPolicy.BLOCK:
                await slots[camera].put(frame)
            else:
                slots[camera].offer(frame)
                await asyncio.sleep(0)
        for slot in slots.values():
            slot.close()

    async with asyncio.timeout(120):
        await asyncio.gather(feed(), pipeline.run())
    sample = metrics.registry.get_sample_value
    analysed = sum(sample("vistream_pipeline_frames_analysed_total", {"camera": c}) for c in slots)
    dropped = {
        reason: sum(sample("vistream_source_frames_dropped_total", {"camera": c, "reason": reason}) for c in slots)
        for reason in DROP_REASONS
    }

    assert count_series(metrics.registry) == series_before
    assert analysed + sum(dropped.values()) == frames
    assert analysed > frames / 2, dropped
    assert dropped["corrupt"] > 0
    assert dropped["inference_error"] > 0
