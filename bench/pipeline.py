"""vistream's own stages under load: decoded frames to results, the full App, and paced latency.

Frames come from several cameras at once, because batching across cameras is what the
pipeline is for. Results go through the real JSON Lines sink into /dev/null.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from detectors.runner import Model
from stream.app import App
from stream.batching import Batcher
from stream.config import validate_config
from stream.frames import Frame, FrameSlot, SlotPolicy
from stream.metrics import Metrics
from stream.pipeline import Pipeline
from stream.sinks.jsonl import JsonLinesSink

FILE_SLOT_FRAMES = 16  # the default of batching.queue_frames, which file cameras get
LIVE_SLOT_FRAMES = 1  # what the App gives rtsp and device cameras
CAMERA_FPS = 25.0  # frame rate of each paced live camera, that of the sample clip


class RecordingSink(JsonLinesSink):
    """The JSON Lines sink, writing to /dev/null, that also records per-result timings."""

    def __init__(self, metrics: Metrics, fed_at: dict[tuple[str, int], float] | None = None):
        super().__init__(None, metrics, stream=open(os.devnull, "wb"))
        self.fed_at = fed_at  # perf_counter() when each (camera, sequence) entered its slot
        self.results = 0
        self.latencies_s: list[tuple[float, float]] = []  # (fed at, capture to result)
        self.preprocess_ms = 0.0
        self.inference_ms = 0.0

    async def publish(self, results: list[dict[str, Any]]) -> None:
        await super().publish(results)
        now = time.perf_counter()
        self.results += len(results)
        for result in results:
            self.preprocess_ms += result["latency_ms"]["preprocess"]
            self.inference_ms += result["latency_ms"]["inference"]
            if self.fed_at is not None:
                fed = self.fed_at.pop((result["camera_id"], result["sequence"]))
                self.latencies_s.append((fed, now - fed))

    @property
    def preprocess_share(self) -> float:
        total = self.preprocess_ms + self.inference_ms
        return self.preprocess_ms / total if total else 0.0

    async def stop(self) -> None:
        self._stream.close()


@dataclass
class Stages:
    """A batcher, pipeline and recording sink around one loaded model, fed by the benchmark."""

    model: Model
    max_batch_size: int
    max_wait_ms: float
    cameras: int
    policy: SlotPolicy
    fed_at: dict[tuple[str, int], float] | None = None
    metrics: Metrics = field(default_factory=lambda: Metrics(CollectorRegistry()))

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.max_batch_size, self.max_wait_ms, self.metrics.frame_dropped)
        capacity = LIVE_SLOT_FRAMES if self.policy is SlotPolicy.LATEST else FILE_SLOT_FRAMES
        self.slots = [self.batcher.add_slot(f"cam{i}", capacity, self.policy) for i in range(self.cameras)]
        self.sink = RecordingSink(self.metrics, self.fed_at)
        self.pipeline = Pipeline(self.batcher, self.model, self.sink, self.metrics, top_k=5)

    def close(self) -> None:
        for slot in self.slots:
            slot.close()

    def dropped(self) -> int:
        families = {family.name: family for family in self.metrics.registry.collect()}
        samples = families["vistream_source_frames_dropped"].samples
        return int(sum(s.value for s in samples if s.name.endswith("_total")))


@dataclass(frozen=True)
class Throughput:
    frames_per_s: float
    cpu_ms_per_frame: float  # CPU time of the whole process per result
    preprocess_share: float  # preprocessing time over preprocessing plus inference time
    mean_batch: float


async def measure_pipeline(
    model: Model, images: list[np.ndarray], max_batch_size: int, max_wait_ms: float, cameras: int,
    warmup_s: float, duration_s: float,
) -> Throughput:
    """Return the pipeline's results per second with every camera's slot kept full of decoded frames."""
    stages = Stages(model, max_batch_size, max_wait_ms, cameras, SlotPolicy.BLOCK)
    stop = asyncio.Event()

    async def feed(slot: FrameSlot, offset: int) -> None:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            image = images[(offset + sequence) % len(images)]
            await slot.put(Frame(slot.camera_id, sequence, time.time(), image, decode_s=0.0))

    feeders = [asyncio.create_task(feed(slot, 37 * i)) for i, slot in enumerate(stages.slots)]
    running = asyncio.create_task(stages.pipeline.run())
    await asyncio.sleep(warmup_s)
    first, started, cpu_began = stages.sink.results, time.perf_counter(), time.process_time()
    batches_before, batched_before = _batches(stages.metrics)
    await asyncio.sleep(duration_s)
    last, ended, cpu_ended = stages.sink.results, time.perf_counter(), time.process_time()
    batches_after, batched_after = _batches(stages.metrics)
    batches, batched = batches_after - batches_before, batched_after - batched_before

    stop.set()
    stages.close()
    await asyncio.gather(*feeders)
    await running
    frames = last - first
    return Throughput(
        frames_per_s=frames / (ended - started),
        cpu_ms_per_frame=(cpu_ended - cpu_began) * 1000.0 / frames,
        preprocess_share=stages.sink.preprocess_share,
        mean_batch=batched / batches if batches else 0.0,
    )


def _batches(metrics: Metrics) -> tuple[float, float]:
    """Return the number of batches formed so far and the frames they contained."""
    sample = metrics.registry.get_sample_value
    return sample("vistream_batcher_batch_size_frames_count") or 0.0, sample("vistream_batcher_batch_size_frames_sum") or 0.0


@dataclass(frozen=True)
class Latency:
    rate_fps: float
    cameras: int
    p50_ms: float
    p99_ms: float
    results: int
    dropped: int
    mean_batch: float
    histogram_buckets: dict[str, dict[str, list[float]]]  # see quantile_buckets


async def measure_latency(
    model: Model, images: list[np.ndarray], rate_fps: float, max_batch_size: int, max_wait_ms: float,
    warmup_s: float, duration_s: float,
) -> Latency:
    """Feed frames at `rate_fps`, spread round-robin over live cameras, and time each to its result.

    There are as many cameras as it takes for none to exceed CAMERA_FPS. A frame's capture time
    is when it enters its slot. The slots are those of live cameras, one frame each with the
    latest policy, so an overloaded pipeline drops frames (reported) instead of queueing them.
    """
    cameras = math.ceil(rate_fps / CAMERA_FPS)
    fed_at: dict[tuple[str, int], float] = {}
    stages = Stages(model, max_batch_size, max_wait_ms, cameras, SlotPolicy.LATEST, fed_at)
    running = asyncio.create_task(stages.pipeline.run())

    began = time.perf_counter()
    index = 0
    while (due := began + index / rate_fps) < began + warmup_s + duration_s:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        slot = stages.slots[index % cameras]
        sequence = index // cameras + 1
        fed_at[(slot.camera_id, sequence)] = time.perf_counter()
        slot.offer(Frame(slot.camera_id, sequence, time.time(), images[index % len(images)], decode_s=0.0))
        index += 1
    stages.close()
    await running

    measured = np.array([latency for fed, latency in stages.sink.latencies_s if fed >= began + warmup_s])
    p50, p99 = np.percentile(measured, [50, 99]) * 1000.0
    batches, batched = _batches(stages.metrics)
    mean_batch = batched / batches if batches else 0.0
    return Latency(
        rate_fps, cameras, float(p50), float(p99), len(measured), stages.dropped(), mean_batch,
        quantile_buckets(stages.metrics.registry),
    )


async def measure_full_path(
    clip_path: str, cameras: int, model_section: dict[str, Any], warmup_s: float, duration_s: float
) -> tuple[float, dict[str, dict[str, list[float]]]]:
    """Run the whole App, decoding the looping sample clip on every camera.

    Return its results per second and, for each latency histogram, the buckets that contain
    the median and the 99th percentile (see `quantile_buckets`).
    """
    config = validate_config(
        {
            "cameras": [{"id": f"cam{i}", "url": clip_path, "loop": True} for i in range(cameras)],
            "model": model_section,
            "http": {"port": 0},
        },
        "benchmark",
    )
    with open(os.devnull, "wb") as devnull:
        app = App(config, registry=CollectorRegistry(), stdout=devnull)
        await app.start()
        running = asyncio.create_task(app.pipeline.run())
        await asyncio.sleep(warmup_s)
        first, started = app.pipeline.analysed, time.perf_counter()
        await asyncio.sleep(duration_s)
        last, ended = app.pipeline.analysed, time.perf_counter()
        app.request_stop()
        await running
        await app.stop()
    return (last - first) / (ended - started), quantile_buckets(app.metrics.registry)


def quantile_buckets(registry: CollectorRegistry) -> dict[str, dict[str, list[float]]]:
    """Return {histogram: {"p50": [lower, upper], "p99": [lower, upper]}}, summed over labels.

    A quantile lies inside the bucket range when its bucket is neither the first (lower 0) nor
    the last (upper infinity). docs/metrics.md promises that for p50 and p99. Histograms without
    observations, or whose observations are all zero, are left out.
    """
    quantiles = {}
    for family in registry.collect():
        if family.type != "histogram":
            continue
        counts: dict[float, float] = {}
        observed_sum = 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                observed_sum += sample.value
        bounds = sorted(counts)
        total = counts[math.inf]
        if total == 0 or observed_sum == 0:
            continue
        quantiles[family.name] = {
            name: _bucket_of(bounds, counts, level * total) for name, level in (("p50", 0.5), ("p99", 0.99))
        }
    return quantiles


def _bucket_of(bounds: list[float], cumulative: dict[float, float], rank: float) -> list[float]:
    lower = 0.0
    for bound in bounds:
        if cumulative[bound] >= rank:
            return [lower, bound]
        lower = bound
    return [lower, math.inf]
