"""/healthz, /readyz and the HTTP port, against a running App on 127.0.0.1.

/readyz must follow the sink: a load balancer or Kubernetes takes vistream out of service while
its sink cannot accept results, and back once it can. /healthz must answer promptly even while
the event loop is blocked.
"""

import asyncio
import io
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream.app import App
from stream.health import Health
from stream.http import MAX_CONCURRENT_REQUESTS, StatusServer
from stream.metrics import Metrics
from stream.sinks.jsonl import JsonLinesSink
from tests.apps import HttpReply, app_config, http_get, running_app, wait_for_status


class SwitchableSink(JsonLinesSink):
    """A JSON Lines sink whose readiness the test switches, standing in for a broker outage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.available = True

    @property
    def ready(self) -> bool:
        return self.available


def looping_config(sample_video, tiny_model, **sections):
    path, card = Path(tiny_model["path"]), Path(tiny_model["card"])
    cameras = [{"id": "gate-1", "url": str(sample_video), "loop": True}]
    return app_config(cameras, model={"path": str(path), "card": str(card)}, **sections)


@pytest.mark.asyncio
async def test_readyz_follows_sink(sample_video, tiny_model):
    sinks: list[SwitchableSink] = []

    def use_switchable_sink(app: App) -> None:
        sinks.append(SwitchableSink(None, app.metrics, stream=io.BytesIO()))
        app.sink = sinks[0]

    async with running_app(looping_config(sample_video, tiny_model), use_switchable_sink) as app:
        ready = await wait_for_status(app.http_port, "/readyz", 200)
        sinks[0].available = False
        outage = await asyncio.to_thread(http_get, app.http_port, "/readyz")
        sinks[0].available = True
        recovered = await asyncio.to_thread(http_get, app.http_port, "/readyz")

    assert ready.json() == {
        "ready": True, "model_loaded": True, "streaming_cameras": ["gate-1"], "sink_ready": True
    }
    assert outage.status == 503
    assert outage.json()["sink_ready"] is False
    assert outage.json()["ready"] is False
    assert recovered.status == 200


@pytest.mark.asyncio
async def test_readyz_fails_after_files_end(sample_video, tiny_model):
    path, card = Path(tiny_model["path"]), Path(tiny_model["card"])
    config = app_config(
        [{"id": "short", "url": str(sample_video), "max_frames": 3}],
        model={"path": str(path), "card": str(card)},
    )
    app = App(config, registry=CollectorRegistry(), stdout=io.BytesIO())
    stopped = {"camera": "short", "state": "stopped"}
    states: list[str] = []
    record_state = app.health.set_camera_state

    def spy(camera_id: str, state: str) -> None:
        states.append(state)
        record_state(camera_id, state)

    app.health.set_camera_state = spy
    await app.start()
    async with asyncio.timeout(30):
        while app.metrics.registry.get_sample_value("vistream_source_camera_state", stopped) != 1:
            await asyncio.sleep(0.02)
    finished = await asyncio.to_thread(http_get, app.http_port, "/readyz")
    await app.pipeline.run()
    await app.stop()

    assert finished.status == 503
    assert finished.json() == {
        "ready": False, "model_loaded": True, "streaming_cameras": [], "sink_ready": True
    }
    assert app.pipeline.analysed == 3
    assert states == ["connecting", "streaming", "stopped"]


def test_readiness_needs_model_camera_and_sink():
    health = Health(Metrics(CollectorRegistry()), liveness_timeout_s=5.0)
    sink = SwitchableSink(None, health.metrics)

    steps = [health.readiness().ready]
    health.set_model_loaded(True)
    steps.append(health.readiness().ready)
    health.set_camera_state("gate-1", "streaming")
    steps.append(health.readiness().ready)
    health.set_sink(sink)
    steps.append(health.readiness().ready)
    health.set_camera_state("gate-1", "backing_off")
    steps.append(health.readiness().ready)

    assert steps == [False, False, False, True, False]


@pytest.mark.asyncio
async def test_healthz_reports_blocked_loop(sample_video, tiny_model):
    config = looping_config(sample_video, tiny_model, http={"port": 0, "liveness_timeout_s": 0.5})
    replies: dict[str, HttpReply] = {}

    def probe_while_blocked(port: int) -> None:
        time.sleep(1.0)
        for path in ("/healthz", "/metrics"):
            replies[path] = http_get(port, path, timeout_s=2.0)

    async with running_app(config) as app:
        responsive = await wait_for_status(app.http_port, "/healthz", 200)
        prober = threading.Thread(target=probe_while_blocked, args=(app.http_port,))
        prober.start()
        time.sleep(2.0)  # blocks the event loop on purpose
        prober.join()
        recovered = await wait_for_status(app.http_port, "/healthz", 200, timeout_s=5.0)

    assert responsive.json()["status"] == "ok"
    assert replies["/healthz"].status == 503
    assert replies["/healthz"].json()["status"] == "stalled"
    assert replies["/healthz"].json()["loop_delay_s"] >= 0.5
    assert replies["/metrics"].status == 200
    assert recovered.json()["status"] == "ok"


@pytest.mark.asyncio
async def test_unknown_path_returns_404(sample_video, tiny_model):
    async with running_app(looping_config(sample_video, tiny_model)) as app:
        reply = await asyncio.to_thread(http_get, app.http_port, "/status")

    assert reply.status == 404
    assert "/metrics, /healthz or /readyz" in reply.json()["error"]


def test_port_in_use_is_one_line_error(run_cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        run = run_cli("run", "--http-port", str(port), "--max-frames", "1")

    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"vistream: error: http.port {port} is already in use")
    assert "--http-port" in lines[0]


def test_concurrent_requests_are_bounded(caplog):
    health = Health(Metrics(CollectorRegistry()), liveness_timeout_s=5.0)
    server = StatusServer("127.0.0.1", 0, health.metrics.registry, health)
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONCURRENT_REQUESTS)]
    try:
        # The accept thread takes connections in order, so the idle ones hold every slot first.
        with pytest.raises(OSError):
            http_get(server.port, "/healthz", timeout_s=2.0)
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 5.0
    while True:
        try:
            after_flood = http_get(server.port, "/healthz", timeout_s=2.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    server.stop()

    assert after_flood.status == 200
    assert "closed 1 new connections unanswered" in caplog.text
