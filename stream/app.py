"""Builds the stages from a Config, owns their lifecycles and shuts them down in stages."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import IO

from prometheus_client import CollectorRegistry

from detectors.runner import Model, ModelSpec
from stream.batching import Batcher
from stream.config import CameraConfig, Config
from stream.errors import ConfigError, VistreamError
from stream.frames import SlotPolicy
from stream.health import Health
from stream.http import StatusServer
from stream.metrics import Metrics
from stream.redact import redact
from stream.pipeline import Pipeline
from stream.sinks.jsonl import JsonLinesSink
from stream.sources.live_camera import LiveCameraSource, configure_rtsp_transport
from stream.sources.video_file import VideoFileSource

log = logging.getLogger(__name__)

# Shares of shutdown_timeout_s, counted from the stop request, by which the stages of a stop end.
# Analysing the frames already read ends by DRAIN_SHARE, flushing the sink by FLUSH_SHARE, and
# committing Kafka offsets by the full shutdown_timeout_s.
DRAIN_SHARE = 0.5
FLUSH_SHARE = 0.8


def camera_kind(camera: CameraConfig) -> str:
    url = camera.url
    if url.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if url.isdigit():
        return "device"
    if url.startswith("kafka://"):
        return "kafka"
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(
            f"camera {camera.camera_id}: url {redact(url)} has the unsupported scheme {scheme}://; "
            "use rtsp://, kafka://TOPIC, a device index or a file path"
        )
    return "file"


class App:
    """One vistream process: sources, batcher, model, pipeline and sink.

    `run` returns when every camera has finished (end of file, max_frames) or after
    `request_stop`. The stop drains frames already read, flushes the sink and returns within
    `shutdown_timeout_s`.
    """

    def __init__(self, config: Config, registry: CollectorRegistry | None = None, stdout: IO[bytes] | None = None):
        self.config = config
        self.metrics = Metrics(registry)
        self.model: Model | None = None
        self.sink = self._build_sink(stdout)
        self.kafka_sources: list = []  # KafkaFramesSource, imported only when configured
        self._failure: VistreamError | None = None
        self._stop_at: float | None = None  # time.monotonic() by which a requested stop must end
        self.batcher: Batcher | None = None
        self.sources: list[VideoFileSource] = []
        self.pipeline: Pipeline | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self.health = Health(self.metrics, config.http.liveness_timeout_s)
        self.http = StatusServer(config.http.host, config.http.port, self.metrics.registry, self.health)
        self._heartbeat: asyncio.Task | None = None

    @property
    def http_port(self) -> int | None:
        """The bound port of /metrics, /healthz and /readyz; None before `start`."""
        return self.http.port

    async def start(self) -> None:
        """Serve the HTTP endpoints, then start the stages; raise VistreamError on bad input.

        The endpoints come first, so /healthz responds and /readyz reports "not ready" while the
        model loads. When starting fails, the port is closed again. The address is logged only
        after a successful start, so that bad input still fails with a single line.
        """
        await asyncio.to_thread(self.http.start)
        self._heartbeat = asyncio.create_task(self.health.run_heartbeat(), name="heartbeat")
        try:
            await self._start_stages()
        except BaseException:
            await self._stop_http()
            raise
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d", self.http.host, self.http.port)

    async def _start_stages(self) -> None:
        """Load the model, open the sink and start the cameras; raise VistreamError on bad input."""
        if not self.config.cameras:
            raise ConfigError("no cameras configured; pass --source PATH_OR_URL or list cameras in the config file")

        self.batcher = Batcher(
            self.config.batching.max_batch_size, self.config.batching.max_wait_ms, self.metrics.frame_dropped
        )
        configure_rtsp_transport(self.config.cameras)
        self.sources = [self._build_source(camera) for camera in self.config.cameras]
        for camera in self.config.cameras:
            self.metrics.register_camera(camera.camera_id)
        for source in self.sources:
            await asyncio.to_thread(source.check)

        self.model = await asyncio.to_thread(Model, self._model_spec())
        self.metrics.model.info(
            {"name": self.model.name, "version": self.model.version, "provider": self.model.provider}
        )
        self.health.set_model_loaded(True)
        await self.sink.start()
        self.metrics.register_sink(self.sink.name)
        self.health.set_sink(self.sink)
        self.pipeline = Pipeline(self.batcher, self.model, self.sink, self.metrics, self.config.model.top_k)
        await self._start_kafka_sources()

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

    def _build_source(self, camera: CameraConfig) -> VideoFileSource | LiveCameraSource:
        kind = camera_kind(camera)
        if kind in ("rtsp", "device"):
            # The latest frame wins: one frame per live camera waits, a newer one supersedes it.
            slot = self.batcher.add_slot(camera.camera_id, 1, SlotPolicy.LATEST)
            return LiveCameraSource(camera, slot, self.metrics, self.health.set_camera_state)
        if kind == "kafka":
            return self._build_kafka_source(camera)
        if kind != "file":
            raise ConfigError(f"camera {camera.camera_id}: {kind} sources are not supported yet; use a video file path")
        slot = self.batcher.add_slot(camera.camera_id, self.config.batching.queue_frames, SlotPolicy.BLOCK)
        return VideoFileSource(camera, slot, self.metrics, self.health)

    def _build_sink(self, stdout: IO[bytes] | None):
        """Return the Kafka sink when kafka.results.topic is set, else the JSON Lines sink."""
        if self.config.kafka.results.topic is not None:
            from stream.sinks.kafka import KafkaSink  # imported late so runs without Kafka skip aiokafka

            return KafkaSink(self.config.kafka, self.metrics)
        return JsonLinesSink(self.config.output.path, self.metrics, stream=stdout)

    def _build_kafka_source(self, camera: CameraConfig):
        from stream.sources.kafka_frames import KafkaFramesSource

        if self.config.kafka.results.topic is not None and self.config.kafka.results.overflow != "block":
            raise ConfigError(
                f"camera {camera.camera_id} reads Kafka frames, which need kafka.results.overflow: block; "
                "a dropped result would leave its frame's offset uncommitted for good"
            )
        # Block, so that no frame is dropped. The consumer stops fetching while the slot is full.
        slot = self.batcher.add_slot(camera.camera_id, self.config.batching.queue_frames, SlotPolicy.BLOCK)
        source = KafkaFramesSource(camera, slot, self.config.kafka, self.metrics, self.health, on_fatal=self.fail)
        self.kafka_sources.append(source)
        return source

    async def _start_kafka_sources(self) -> None:
        """Join the frames topics' groups and have the sink report each result's delivery to them.

        A kafka:// camera commits a frame's offset only once its result is delivered. The JSON
        Lines sink has no delivery reports, so it is wrapped, and a written result counts as delivered.
        """
        if not self.kafka_sources:
            return
        from stream.kafka_delivery import ReportingSink

        if not hasattr(self.sink, "add_delivery_listener"):
            self.sink = self.pipeline.sink = ReportingSink(self.sink)
            self.health.set_sink(self.sink)
        self.pipeline.on_dropped = self._dead_letter_dropped

        started = []
        try:
            for source in self.kafka_sources:
                self.sink.add_delivery_listener(source)
                await source.start()
                started.append(source)
        except BaseException:
            for source in started:
                await source.close(self.config.shutdown_timeout_s / 2)
            await self._stop_sink()
            raise

    def _dead_letter_dropped(self, frames: list, reason: str) -> None:
        for source in self.kafka_sources:
            source.dead_letter_dropped(frames, reason)

    def fail(self, error: VistreamError) -> None:
        """Stop because of `error`; `run` raises it once the stop is complete."""
        if self._failure is None:
            self._failure = error
        self.request_stop()

    def _time_left(self, share: float) -> float:
        """Seconds left until `share` of shutdown_timeout_s has passed since the stop request."""
        total = self.config.shutdown_timeout_s
        return max(0.0, self._stop_at - total * (1.0 - share) - time.monotonic())

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %s", task.get_name(), task.exception(), exc_info=task.exception())

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop intake; frames already read are still analysed and published."""
        if not self._stopping.is_set():
            log.info("stopping (%s): no new frames are read; finishing the frames in flight", reason)
            self._stop_at = time.monotonic() + self.config.shutdown_timeout_s
            self._stopping.set()
            for source in self.sources:
                source.stop()

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._run_pipeline()
            self.request_stop("every camera finished")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
        if self._failure is not None:
            raise self._failure

    async def _run_pipeline(self) -> None:
        """Run the pipeline until every camera finishes; after a stop request, until the drain deadline.

        Without a broker the Kafka sink's buffer fills, and with the block policy the pipeline
        then waits. The deadline ends that wait, so a stop never takes longer than configured.
        """
        pipeline = asyncio.create_task(self.pipeline.run(), name="pipeline")
        stop_requested = asyncio.create_task(self._stopping.wait(), name="stop-requested")
        cancelled_by_deadline = False
        try:
            await asyncio.wait({pipeline, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
            if not pipeline.done():
                await asyncio.wait({pipeline}, timeout=self._time_left(DRAIN_SHARE))
            if not pipeline.done():
                log.warning(
                    "%d frames read but not analysed and published by the drain deadline; they are dropped",
                    self.batcher.queued_frames,
                )
                cancelled_by_deadline = pipeline.cancel()
        finally:
            stop_requested.cancel()
            pipeline.cancel()
            await asyncio.gather(stop_requested, return_exceptions=True)
        try:
            await pipeline
        except asyncio.CancelledError:
            if not cancelled_by_deadline:
                raise

    async def stop(self) -> None:
        """Stop in stages within shutdown_timeout_s: cameras, sink flush, Kafka offset commits.

        Each stage ends by its share of the deadline (DRAIN_SHARE, FLUSH_SHARE, then the rest);
        what a stage leaves undone is logged.
        """
        self.request_stop()
        if self._tasks:
            timeout_s = self._time_left(DRAIN_SHARE)
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                log.warning("task %s did not stop within %.1f s; cancelling it", task.get_name(), timeout_s)
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._stop_sink()
        for source in self.kafka_sources:
            await source.close(self._time_left(1.0) / len(self.kafka_sources))
        self.health.set_sink(None)
        await self._stop_http()
        log.info("stopped after %d results", self.pipeline.analysed if self.pipeline else 0)

    async def _stop_sink(self) -> None:
        # A sink that flushes over the network (Kafka) gets the time left for this stage.
        if hasattr(self.sink, "stop_timeout_s"):
            self.sink.stop_timeout_s = self._time_left(FLUSH_SHARE) if self._stop_at else self.config.shutdown_timeout_s
        await self.sink.stop()

    async def _stop_http(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        await asyncio.to_thread(self.http.stop)
