"""Liveness and readiness of one App, as /healthz and /readyz report them.

The event loop, camera threads and HTTP threads all touch this state, so every method except
the `run_heartbeat` task is thread-safe. Readers never wait on the event loop, so a stuck loop
shows up as a stale heartbeat instead of a reader that hangs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from stream.metrics import Metrics

log = logging.getLogger(__name__)

STREAMING = "streaming"


class ReadySink(Protocol):
    """The part of a sink that readiness reads: `ready` must be cheap and safe from any thread."""

    name: str

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True)
class Readiness:
    """The checks that /readyz reports; `ready` is true only when every check passes."""

    model_loaded: bool
    streaming_cameras: tuple[str, ...]
    sink_ready: bool

    @property
    def ready(self) -> bool:
        return self.model_loaded and bool(self.streaming_cameras) and self.sink_ready


class Health:
    """Heartbeat of the event loop, camera states, model and sink, for the HTTP endpoints.

    Sources report every state change through `set_camera_state`, which also sets the
    `vistream_source_camera_state` metric, so the metric and /readyz never disagree.
    """

    def __init__(self, metrics: Metrics, liveness_timeout_s: float):
        self.metrics = metrics
        self.liveness_timeout_s = liveness_timeout_s
        self._lock = threading.Lock()
        self._camera_states: dict[str, str] = {}
        self._model_loaded = False
        self._sink: ReadySink | None = None
        self._beat_at = time.monotonic()

    def set_camera_state(self, camera_id: str, state: str) -> None:
        """Record a camera's state and export it; raise ValueError for a state not in CAMERA_STATES."""
        self.metrics.set_camera_state(camera_id, state)
        with self._lock:
            self._camera_states[camera_id] = state

    def set_model_loaded(self, loaded: bool) -> None:
        with self._lock:
            self._model_loaded = loaded

    def set_sink(self, sink: ReadySink | None) -> None:
        """Use this sink's `ready` for readiness; None until the sink has started."""
        with self._lock:
            self._sink = sink

    def readiness(self) -> Readiness:
        with self._lock:
            streaming = tuple(sorted(c for c, state in self._camera_states.items() if state == STREAMING))
            model_loaded = self._model_loaded
            sink = self._sink
        return Readiness(model_loaded, streaming, sink is not None and bool(sink.ready))

    def beat(self) -> None:
        self._beat_at = time.monotonic()

    def loop_delay_s(self) -> float:
        """Seconds since the event loop last ran its heartbeat."""
        return max(0.0, time.monotonic() - self._beat_at)

    def alive(self) -> bool:
        return self.loop_delay_s() <= self.liveness_timeout_s

    async def run_heartbeat(self) -> None:
        """Refresh the heartbeat from the event loop until cancelled.

        The interval is a fifth of the liveness timeout, so a responsive loop never looks
        stale, and a loop blocked for longer than the timeout always does.
        """
        interval_s = self.liveness_timeout_s / 5
        while True:
            self.beat()
            await asyncio.sleep(interval_s)
