"""Live cameras (RTSP URLs and capture devices), supervised so that a failing stream is reconnected.

Each camera runs a supervisor task on the event loop and, per connection attempt, one capture
thread that opens the stream and decodes it with OpenCV's FFmpeg backend. The thread hands
frames to the loop; the supervisor watches them and owns the camera's state:

    connecting -> streaming -> (stalled | read failure) -> backing_off -> connecting ...
                                                      stop from any state -> stopped

OpenCV's own open and read deadlines are set explicitly on every capture, because its default is
30 s and FFmpeg's retries can stretch that into minutes. The supervisor does not trust them
alone: it declares a stream stalled once no frame has arrived for `read_timeout_s` plus a
margin, abandons that capture thread (it exits when its blocked call returns) and reconnects.
A blocked thread therefore never holds up its own camera, let alone another one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit

import cv2

from stream.config import CameraConfig
from stream.errors import ConfigError
from stream.frames import Frame, FrameSlot
from stream.metrics import Metrics
from stream.redact import redact, register_secret
from stream.sources.backoff import Backoff, Reminder
from stream.sources.rtsp_probe import probe_rtsp

log = logging.getLogger(__name__)

CONNECTING = "connecting"
STREAMING = "streaming"
STALLED = "stalled"
BACKING_OFF = "backing_off"
STOPPED = "stopped"

WATCHDOG_MARGIN_S = 1.0  # slack on top of the read deadline before a stream counts as stalled
WATCHDOG_PERIOD_S = 0.2
REMINDER_INTERVAL_S = 60.0
MAX_ABANDONED_THREADS = 2  # per camera; beyond this a reconnect waits for one to exit


RTSP_OPTIONS_VARIABLE = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_transport_option_set: str | None = None  # the value this module wrote, as opposed to the user's


def configure_rtsp_transport(cameras: list[CameraConfig]) -> None:
    """Select the RTSP transport of every RTSP camera in this process.

    OpenCV's FFmpeg backend reads the transport from one process-wide environment variable
    while it opens a stream, so it cannot differ between cameras of one process, and the
    variable must be set before any capture thread starts.
    """
    transports = {c.transport for c in cameras if c.url.startswith(("rtsp://", "rtsps://"))}
    if not transports:
        return
    if len(transports) > 1:
        raise ConfigError(
            "cameras use both tcp and udp transports, but OpenCV's FFmpeg backend takes one RTSP transport per "
            "process; give every camera the same transport or run the udp cameras in a second vistream process"
        )
    global _transport_option_set
    requested = f"rtsp_transport;{transports.pop()}"
    current = os.environ.get(RTSP_OPTIONS_VARIABLE)
    if current is not None and current != requested and current != _transport_option_set:
        log.warning("%s is set to %r by the environment; using it instead of %r", RTSP_OPTIONS_VARIABLE, current, requested)
        return
    os.environ[RTSP_OPTIONS_VARIABLE] = requested
    _transport_option_set = requested


def resolve_password(camera: CameraConfig) -> str | None:
    """Return the camera's password from the config, an environment variable or a file."""
    if camera.password is not None:
        return camera.password.get_secret_value()
    if camera.password_env is not None:
        value = os.environ.get(camera.password_env)
        if value is None:
            raise ConfigError(
                f"camera {camera.camera_id}: environment variable {camera.password_env} (password_env) is not set; "
                "export it or change password_env"
            )
        return value
    if camera.password_file is not None:
        try:
            lines = Path(camera.password_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(
                f"camera {camera.camera_id}: cannot read password_file {camera.password_file}: {exc.strerror}"
            ) from None
        return lines[0] if lines else ""
    return None


def stream_url(camera: CameraConfig) -> str:
    """Return the URL OpenCV opens: the configured one with the credentials inserted.

    The result contains the password and must never be logged or stored outside the capture.
    """
    password = resolve_password(camera)
    parts = urlsplit(camera.url)
    if parts.password:
        register_secret(parts.password)
    register_secret(password)
    if camera.username is None and password is None:
        return camera.url

    user = camera.username if camera.username is not None else (parts.username or "")
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))


@dataclass(eq=False)
class _Capture:
    """One connection attempt: its thread and what the thread has reported so far."""

    attempt: int
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    opened: bool = False
    failure: str | None = None
    stalled: bool = False
    last_frame_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class LiveCameraSource:
    """A supervised RTSP camera or capture device; the latest frame wins at its slot."""

    def __init__(
        self,
        camera: CameraConfig,
        slot: FrameSlot,
        metrics: Metrics,
        set_state: Callable[[str, str], None] | None = None,
    ):
        self.camera = camera
        self.camera_id = camera.camera_id
        self.slot = slot
        self.metrics = metrics
        self._set_state_hook = set_state or metrics.set_camera_state
        self.state: str | None = None
        self.display_url = redact(camera.url)
        self._url: str | None = None
        self._stopping = asyncio.Event()
        self._sequence = 0
        self._delivered = 0
        self._backoff = Backoff(camera.reconnect_initial_s, camera.reconnect_max_s)
        self._reminder = Reminder(REMINDER_INTERVAL_S)
        self._failing_since: float | None = None
        self._abandoned: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"LiveCameraSource(camera_id={self.camera_id!r}, url={self.display_url!r}, state={self.state!r})"

    def check(self) -> None:
        """Resolve credentials now, so a missing password variable or file fails at start-up."""
        self._url = stream_url(self.camera)

    def stop(self) -> None:
        """Ask the supervisor to stop; safe to call from the event loop at any time."""
        self._stopping.set()

    # -- supervisor (event loop) -------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._url is None:
            self.check()
        try:
            while not self._stopping.is_set():
                capture = self._new_capture()
                reason = await self._probe()
                if reason is None:
                    self._start_thread(capture)
                    reason = await self._watch(capture)
                    self._abandon(capture)
                if self._stopping.is_set():
                    break
                await self._back_off(reason)
        finally:
            self._set_state(STOPPED, "stop requested")
            self.slot.close()

    def _new_capture(self) -> _Capture:
        attempt = self._backoff.failures + 1
        self._set_state(CONNECTING, f"opening {self.display_url} (attempt {attempt})")
        return _Capture(attempt)

    async def _probe(self) -> str | None:
        """Return why the RTSP server is unreachable, or None when it responds (and for devices)."""
        if not self.camera.url.startswith("rtsp://"):
            return None
        probe = asyncio.ensure_future(probe_rtsp(self.camera.url, self.camera.open_timeout_s))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({probe, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not probe.done():
            probe.cancel()
            return "stop requested"
        error = probe.exception()
        return str(error) if error is not None else None

    def _start_thread(self, capture: _Capture) -> None:
        capture.thread = threading.Thread(
            target=self._capture_thread, args=(capture,), name=f"camera-{self.camera_id}", daemon=True
        )
        capture.thread.start()

    async def _watch(self, capture: _Capture) -> str:
        """Wait until the capture fails, stalls or the camera stops; return the reason."""
        started = time.monotonic()
        open_deadline = self.camera.open_timeout_s + WATCHDOG_MARGIN_S
        stall_after = self.camera.read_timeout_s + WATCHDOG_MARGIN_S
        while not self._stopping.is_set():
            capture.changed.clear()
            if capture.failure is not None:
                if capture.stalled:
                    self._set_state(STALLED, capture.failure)
                return capture.failure
            now = time.monotonic()
            if capture.last_frame_at is None:
                # Opening, or opened but no frame yet: both must finish within the open deadline.
                if now - started > open_deadline + (stall_after if capture.opened else 0.0):
                    return f"no frame within {open_deadline:.1f} s of connecting"
            elif now - capture.last_frame_at > stall_after:
                self._set_state(STALLED, f"no frame for {now - capture.last_frame_at:.1f} s")
                return f"stalled: no frame for {stall_after:.1f} s"
            try:
                async with asyncio.timeout(WATCHDOG_PERIOD_S):
                    await self._wait_any(capture.changed, self._stopping)
            except TimeoutError:
                pass
        return "stop requested"

    @staticmethod
    async def _wait_any(*events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _abandon(self, capture: _Capture) -> None:
        capture.stop.set()
        if capture.thread is not None and capture.thread.is_alive():
            self._abandoned.append(capture.thread)
        self._abandoned = [t for t in self._abandoned if t.is_alive()]

    async def _back_off(self, reason: str) -> None:
        self.metrics.reconnects.labels(self.camera_id).inc()
        delay_s = self._backoff.next_delay_s()
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._reminder.reset()
        if self._reminder.due():
            down_s = now - self._failing_since
            log.warning(
                "camera %s: %s; reconnecting in %.1f s (failed %d times over %.0f s)",
                self.camera_id, redact(reason), delay_s, self._backoff.failures, down_s,
            )
        self._set_state(BACKING_OFF, f"retry in {delay_s:.1f} s")

        # Threads that ignored their deadlines are not piled up without bound.
        while len(self._abandoned) >= MAX_ABANDONED_THREADS and not self._stopping.is_set():
            log.warning("camera %s: %d capture threads still blocked; waiting for one to exit", self.camera_id, len(self._abandoned))
            await asyncio.to_thread(self._abandoned[0].join, self.camera.read_timeout_s)
            self._abandoned = [t for t in self._abandoned if t.is_alive()]

        try:
            async with asyncio.timeout(delay_s):
                await self._stopping.wait()
        except TimeoutError:
            pass

    def _set_state(self, state: str, detail: str) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        self._set_state_hook(self.camera_id, state)
        # While a camera keeps failing, its connect/back-off cycle is logged at DEBUG; the
        # WARNING reminder in _back_off reports it periodically instead.
        failing_cycle = self._failing_since is not None and state in (CONNECTING, BACKING_OFF, STALLED)
        level = logging.DEBUG if failing_cycle else logging.INFO
        log.log(level, "camera %s: %s -> %s (%s)", self.camera_id, previous or "new", state, redact(detail))

    # -- frames arriving from the capture thread (event loop) ----------------------------------

    def _on_opened(self, capture: _Capture) -> None:
        capture.opened = True
        capture.changed.set()

    def _on_failure(self, capture: _Capture, reason: str, stalled: bool = False) -> None:
        capture.failure = reason
        capture.stalled = stalled
        capture.changed.set()

    def _on_frame(self, capture: _Capture, frame: Frame) -> None:
        if capture.stop.is_set() or self._stopping.is_set():
            return  # a late frame of an abandoned capture or a stopping camera
        capture.last_frame_at = time.monotonic()
        if self.state != STREAMING:
            recovered = self._failing_since is not None
            self._set_state(STREAMING, f"{frame.image.shape[1]}x{frame.image.shape[0]}")
            if recovered:
                log.info(
                    "camera %s: streaming again after %d failed attempts", self.camera_id, self._backoff.failures
                )
            self._failing_since = None
            self._backoff.reset()
        self.slot.offer(frame)
        self.metrics.frame_received(self.camera_id)
        self._delivered += 1
        if self.camera.max_frames and self._delivered >= self.camera.max_frames:
            log.info("camera %s: max_frames (%d) delivered; stopping", self.camera_id, self.camera.max_frames)
            self.stop()

    def _on_corrupt(self, capture: _Capture, sequence: int) -> None:
        self.metrics.frame_dropped(self.camera_id, "corrupt")
        log.debug("camera %s: frame %d could not be converted; skipped", self.camera_id, sequence)

    # -- capture thread ------------------------------------------------------------------------

    def _post(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop has closed: the process is exiting

    def _open(self) -> cv2.VideoCapture:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.camera.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.camera.read_timeout_s * 1000),
        ]
        source = int(self.camera.url) if self.camera.url.isdigit() else self._url
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG if isinstance(source, str) else cv2.CAP_ANY, params)

    def _capture_thread(self, capture: _Capture) -> None:
        video = self._open()
        try:
            if capture.stop.is_set():
                return
            if not video.isOpened():
                self._post(self._on_failure, capture, f"cannot open {self.display_url}")
                return
            self._post(self._on_opened, capture)
            self._read_frames(capture, video)
        except Exception as exc:  # OpenCV raises cv2.error and others; the supervisor must hear of it
            self._post(self._on_failure, capture, f"capture failed: {exc}")
        finally:
            video.release()

    def _read_frames(self, capture: _Capture, video: cv2.VideoCapture) -> None:
        period_s = 1.0 / self.camera.fps if self.camera.fps else 0.0
        next_due = 0.0
        read_deadline_s = self.camera.read_timeout_s * 0.95
        while not capture.stop.is_set():
            started = time.perf_counter()
            if not video.grab():
                self._post(self._on_failure, capture, "read failed: the stream ended or timed out")
                return
            # A read that ran into its deadline may still return an old frame left in the
            # decoder (seen with OpenCV 5.1 against a paused server), so the time it took is
            # what reveals a stall.
            if time.perf_counter() - started >= read_deadline_s:
                self._post(self._on_failure, capture, f"stalled: a read took over {self.camera.read_timeout_s:.1f} s", True)
                return
            self._sequence += 1
            # Every frame is decoded (the codec needs them), but only frames due are converted.
            now = time.monotonic()
            if period_s and now < next_due:
                continue
            next_due = max(next_due + period_s, now) if period_s else now

            ok, image = video.retrieve()
            if not ok or image is None:
                self._post(self._on_corrupt, capture, self._sequence)
                continue
            pts_ms = video.get(cv2.CAP_PROP_POS_MSEC)
            frame = Frame(
                camera_id=self.camera_id,
                sequence=self._sequence,
                captured_at=time.time(),
                image=image,
                decode_s=time.perf_counter() - started,
                pts_ms=pts_ms if pts_ms >= 0 else None,
            )
            self._post(self._on_frame, capture, frame)
