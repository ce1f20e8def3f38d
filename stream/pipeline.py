"""Batches to results: inference in worker threads, results emitted in batch order."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Protocol

import numpy as np

from detectors.postprocess import top_k
from detectors.runner import BatchTiming, Model
from stream.batching import Batcher
from stream.frames import Frame
from stream.metrics import Metrics
from stream.results import build_result

log = logging.getLogger(__name__)


def metric_camera_id(frame: Frame) -> str:
    """Return the camera label for a frame's metrics: its configured camera, never an id read from the frame."""
    return frame.configured_camera_id or frame.camera_id


class Sink(Protocol):
    name: str

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def publish(self, results: list[dict[str, Any]]) -> None: ...

    async def stop(self) -> None: ...


class Pipeline:
    """Pulls batches from the batcher, runs them on `workers` threads and publishes the results.

    At most `workers` batches are in flight. The emitter awaits them in submission order, so
    each camera's results leave in sequence order even with several workers.
    """

    def __init__(self, batcher: Batcher, model: Model, sink: Sink, metrics: Metrics, top_k: int):
        self.batcher = batcher
        self.model = model
        self.sink = sink
        self.metrics = metrics
        self.top_k = top_k
        self.workers = model.spec.workers
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="vistream-infer")
        self._inflight: asyncio.Queue = asyncio.Queue(maxsize=self.workers)
        self.analysed = 0
        # Called with the frames of a batch whose inference failed, after they are counted; the
        # App routes Kafka frames to the dead-letter topic through it.
        self.on_dropped: Callable[[list[Frame], str], None] | None = None

    async def run(self) -> None:
        """Process batches until every camera is finished, then return."""
        submitter = asyncio.create_task(self._submit_batches(), name="pipeline-submit")
        try:
            await self._emit_results()
        finally:
            submitter.cancel()
            await asyncio.gather(submitter, return_exceptions=True)
            self._executor.shutdown(wait=True, cancel_futures=True)

    async def _submit_batches(self) -> None:
        loop = asyncio.get_running_loop()
        # A batch is formed only once a worker is free. Frames meanwhile stay in their slots,
        # where a live camera's newer frame supersedes them, instead of ageing in a queue.
        free_workers = asyncio.Semaphore(self.workers)
        try:
            while True:
                await free_workers.acquire()
                batch = await self.batcher.next_batch()
                if batch is None:
                    break
                self.metrics.batch_size.observe(len(batch))
                self.metrics.queued_frames.set(self.batcher.queued_frames)
                images = [frame.image for frame in batch]
                future = loop.run_in_executor(self._executor, self._infer, images)
                future.add_done_callback(lambda _: free_workers.release())
                self.metrics.inflight_batches.inc()
                await self._inflight.put((batch, future))
        finally:
            await self._inflight.put(None)

    def _infer(self, images: list[np.ndarray]) -> tuple[float, np.ndarray, BatchTiming]:
        started = time.monotonic()
        scores, timing = self.model.infer(images)
        return started, scores, timing

    async def _emit_results(self) -> None:
        while (item := await self._inflight.get()) is not None:
            batch, future = item
            try:
                started, scores, timing = await future
            except Exception:
                # One failed batch must not end the stream: its frames are counted and logged.
                log.exception("inference failed for a batch of %d frames; they are dropped", len(batch))
                for frame in batch:
                    self.metrics.frame_dropped(metric_camera_id(frame), "inference_error")
                if self.on_dropped is not None:
                    self.on_dropped(batch, "inference_error")
                continue
            finally:
                self.metrics.inflight_batches.dec()
            await self.sink.publish(self._results(batch, started, scores, timing))

    def _results(self, batch: list[Frame], started: float, scores: np.ndarray, timing: BatchTiming) -> list[dict]:
        self.metrics.inference_seconds.observe(timing.preprocess_s + timing.inference_s)
        predictions = top_k(scores, self.top_k, self.model.labels)
        published_at = time.time()

        results = []
        for frame, frame_predictions in zip(batch, predictions):
            queue_s = max(0.0, started - frame.enqueued_at)
            results.append(
                build_result(
                    frame,
                    frame_predictions,
                    self.model.name,
                    self.model.version,
                    queue_s=queue_s,
                    preprocess_s=timing.preprocess_s,
                    inference_s=timing.inference_s,
                    published_at=published_at,
                )
            )
            self.metrics.decode_seconds.labels(metric_camera_id(frame)).observe(frame.decode_s)
            self.metrics.queue_seconds.observe(queue_s)
            self.metrics.capture_to_publish_seconds.observe(max(0.0, published_at - frame.captured_at))
            self.metrics.frames_analysed.labels(metric_camera_id(frame)).inc()
        self.analysed += len(results)
        return results
