"""Builds the stages from a Config, owns their lifecycles and shuts them down in stages."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import IO

from prometheus_client import CollectorRegistry

from detectors.runner import Model, ModelSpec
from stream.batching import Batcher
from stream.config import CameraConfig, Config
from stream.errors import ConfigError
from stream.frames import SlotPolicy
from stream.metrics import Metrics
from stream.pipeline import Pipeline
from stream.sinks.jsonl import JsonLinesSink
from stream.sources.video_file import VideoFileSource

log = logging.getLogger(__name__)


def camera_kind(camera: CameraConfig) -> str:
    url = camera.url
    if url.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if url.isdigit():
        return "device"
    if "://" in url:
        raise ConfigError(f"camera {camera.camera_id}: unsupported url scheme in {url.split('://')[0]!r}; use rtsp:// or a file path")
    return "file"


class App:
    """One vistream process: sources, batcher, model, pipeline and sink.

    `run` returns when every camera has finished (end of file, max_frames) or after
    `request_stop`; the stop drains frames already read, flushes the sink and returns within
    `shutdown_timeout_s`.
    """

    def __init__(self, config: Config, registry: CollectorRegistry | None = None, stdout: IO[bytes] | None = None):
        self.config = config
        self.metrics = Metrics(registry)
        self.model: Model | None = None
        self.sink = JsonLinesSink(config.output.path, self.metrics, stream=stdout)
        self.batcher: Batcher | None = None
        self.sources: list[VideoFileSource] = []
        self.pipeline: Pipeline | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Load the model, open the sink and start the cameras; raise VistreamError on bad input."""
        if not self.config.cameras:
            raise ConfigError("no cameras configured; pass --source PATH_OR_URL or list cameras in the config file")

        self.batcher = Batcher(
            self.config.batching.max_batch_size, self.config.batching.max_wait_ms, self.metrics.frame_dropped
        )
        self.sources = [self._build_source(camera) for camera in self.config.cameras]
        for source in self.sources:
            await asyncio.to_thread(source.check)

        self.model = await asyncio.to_thread(Model, self._model_spec())
        self.metrics.model.info(
            {"name": self.model.name, "version": self.model.version, "provider": self.model.provider}
        )
        await self.sink.start()
        self.pipeline = Pipeline(self.batcher, self.model, self.sink, self.metrics, self.config.model.top_k)

        for source in self.sources:
            self._spawn(source.run(), f"camera-{source.camera_id}")

    def _model_spec(self) -> ModelSpec:
        m = self.config.model
        return ModelSpec(
            path=m.path,
            card_path=m.card,
            provider=m.provider,
            workers=m.workers,
            intra_op_threads=m.intra_op_threads,
            session_per_worker=m.session_per_worker,
        )

    def _build_source(self, camera: CameraConfig) -> VideoFileSource:
        kind = camera_kind(camera)
        if kind != "file":
            raise ConfigError(f"camera {camera.camera_id}: {kind} sources are not supported yet; use a video file path")
        slot = self.batcher.add_slot(camera.camera_id, self.config.batching.queue_frames, SlotPolicy.BLOCK)
        return VideoFileSource(camera, slot, self.metrics)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %s", task.get_name(), task.exception(), exc_info=task.exception())

    def request_stop(self) -> None:
        """Stop intake; frames already read are still analysed and published."""
        if not self._stopping.is_set():
            log.info("stopping: no new frames are read; finishing the frames in flight")
            self._stopping.set()
            for source in self.sources:
                source.stop()

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.pipeline.run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def stop(self) -> None:
        """Stop the cameras, cancel what is left after the deadline and close the sink."""
        self.request_stop()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_timeout_s)
            for task in pending:
                log.warning("task %s did not stop within %.1f s; cancelling it", task.get_name(), self.config.shutdown_timeout_s)
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.sink.stop()
        log.info("stopped after %d results", self.pipeline.analysed if self.pipeline else 0)
