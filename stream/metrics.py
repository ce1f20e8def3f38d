"""Metric definitions on an injected registry.

Names follow `vistream_<subsystem>_<name>_<unit>` and counters end in `_total`. Labels come
only from closed sets: camera ids from the config, and the enums named in each help text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Seconds. Buckets span from sub-millisecond work to multi-second stalls, so that p50 and p99
# fall inside the range for CPU and GPU deployments alike.
DECODE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
END_TO_END_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

DROP_REASONS = (
    "superseded", "corrupt", "oversize", "too_large_dimensions", "invalid_header", "inference_error", "shutdown"
)
CAMERA_STATES = ("connecting", "streaming", "stalled", "backing_off", "stopped")
PUBLISH_OUTCOMES = ("success", "failure", "overflow")


class Metrics:
    """Every metric vistream exports, registered on one registry per app instance."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry

        self.frames_received = Counter(
            "vistream_source_frames_received_total", "Frames delivered by a camera.", ["camera"], registry=r
        )
        self.frames_dropped = Counter(
            "vistream_source_frames_dropped_total",
            "Frames discarded before analysis, by reason: " + ", ".join(DROP_REASONS) + ".",
            ["camera", "reason"],
            registry=r,
        )
        self.frames_analysed = Counter(
            "vistream_pipeline_frames_analysed_total", "Frames that produced a result.", ["camera"], registry=r
        )
        self.camera_state = Gauge(
            "vistream_source_camera_state",
            "1 for the camera's current state, 0 for the others: " + ", ".join(CAMERA_STATES) + ".",
            ["camera", "state"],
            registry=r,
        )
        self.reconnects = Counter(
            "vistream_source_reconnects_total", "Reconnect attempts after a failure.", ["camera"], registry=r
        )
        self.decode_seconds = Histogram(
            "vistream_source_decode_duration_seconds",
            "Time to decode one analysed frame.",
            ["camera"],
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "vistream_pipeline_queue_duration_seconds",
            "Time a frame waited in its slot and the batcher before inference.",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "vistream_model_inference_duration_seconds",
            "Time to preprocess and run one batch.",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.capture_to_publish_seconds = Histogram(
            "vistream_pipeline_capture_to_publish_seconds",
            "Time from a frame's capture to its result being handed to the sink.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vistream_batcher_batch_size_frames", "Frames per batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.inflight_batches = Gauge(
            "vistream_pipeline_inflight_batches", "Batches being preprocessed or run.", registry=r
        )
        self.queued_frames = Gauge(
            "vistream_batcher_queued_frames", "Frames waiting in all slots for a batch.", registry=r
        )
        self.published = Counter(
            "vistream_sink_results_total",
            "Results handed to a sink, by outcome: " + ", ".join(PUBLISH_OUTCOMES) + ".",
            ["sink", "outcome"],
            registry=r,
        )
        self.buffered_results = Gauge(
            "vistream_sink_buffered_results", "Results waiting in a sink's outage buffer.", ["sink"], registry=r
        )
        self.buffer_fill_ratio = Gauge(
            "vistream_sink_buffer_fill_ratio", "Outage buffer fill, from 0 to 1.", ["sink"], registry=r
        )
        self.model = Info("vistream_model", "The loaded model and its active execution provider.", registry=r)

    def register_camera(self, camera: str) -> None:
        """Create a camera's series at zero, so they are exported before its first frame.

        A series that first appears on its first increment hides that increment from rate().
        """
        for metric in (self.frames_received, self.frames_analysed, self.reconnects, self.decode_seconds):
            metric.labels(camera)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(camera, reason)
        for state in CAMERA_STATES:
            self.camera_state.labels(camera, state)

    def register_sink(self, sink: str) -> None:
        """Create a sink's series at zero, so they are exported before its first result."""
        for outcome in PUBLISH_OUTCOMES:
            self.published.labels(sink, outcome)
        self.buffered_results.labels(sink)
        self.buffer_fill_ratio.labels(sink)

    def frame_received(self, camera: str) -> None:
        self.frames_received.labels(camera).inc()

    def frame_dropped(self, camera: str, reason: str) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        self.frames_dropped.labels(camera, reason).inc()

    def set_camera_state(self, camera: str, state: str) -> None:
        if state not in CAMERA_STATES:
            raise ValueError(f"unknown camera state {state!r}")
        for candidate in CAMERA_STATES:
            self.camera_state.labels(camera, candidate).set(1 if candidate == state else 0)
