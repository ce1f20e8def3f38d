"""Live RTSP cameras against a real GStreamer RTSP server that the tests pause, kill and restart.

Guards the camera supervisor: stall detection, reconnects with backoff, fresh frames under a slow
model, isolation of a dead camera from healthy ones, and credentials that never leak.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from detectors.runner import Model
from stream.sources.live_camera import LiveCameraSource
from tests.apps import app_config, http_get, running_app, wait_until
from tests.support.rtsp import RtspServer, free_port

pytestmark = pytest.mark.rtsp

PASSWORD = "pw-Zq8!x"  # a distinctive secret, easy to search for


@pytest.fixture
def rtsp_server(tmp_path, sample_video):
    server = RtspServer(port=0, mounts={"/cam1": sample_video, "/cam2": sample_video}, log_path=tmp_path / "rtsp.log")
    server.start()
    yield server
    server.stop()
    # pytest shows what a fixture prints only when the test fails.
    print(f"RTSP server log {server.log_path}:\n{server.log_tail()}")


def camera(camera_id: str, url: str, **settings) -> dict:
    return {"id": camera_id, "url": url, "open_timeout_s": 3, "read_timeout_s": 2,
            "reconnect_initial_s": 0.2, "reconnect_max_s": 2, **settings}


def live_sources(app) -> dict[str, LiveCameraSource]:
    return {s.camera_id: s for s in app.sources if isinstance(s, LiveCameraSource)}


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def counter_value(app, name: str, **labels) -> float:
    value = app.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.asyncio
async def test_paused_stream_detected_and_recovered(rtsp_server, tmp_path):
    output = tmp_path / "results.jsonl"
    config = app_config([camera("cam1", rtsp_server.url("/cam1"))], output={"path": str(output)})

    async with running_app(config) as app:
        source = live_sources(app)["cam1"]
        await wait_until(lambda: source.state == "streaming", 20, "first streaming")

        rtsp_server.pause()
        paused_at = time.monotonic()
        detected_s = await wait_until(lambda: source.state != "streaming", 15, "stall detection")
        # The read deadline is 2 s and the watchdog margin 1 s; allow scheduling slack on 2 cores.
        assert detected_s <= 2 + 1 + 2.5
        results_while_paused = len(read_results(output))

        rtsp_server.resume()
        await wait_until(lambda: source.state == "streaming", 30, "recovery after resume")
        await wait_until(lambda: len(read_results(output)) > results_while_paused + 5, 20, "new results")
        recovered_s = time.monotonic() - paused_at

    assert counter_value(app, "vistream_source_reconnects_total", camera="cam1") >= 1
    assert recovered_s < 40


@pytest.mark.asyncio
async def test_killed_server_reconnects_with_backoff(rtsp_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="stream.sources.live_camera")
    config = app_config([camera("cam1", rtsp_server.url("/cam1"))], output={"path": str(tmp_path / "r.jsonl")})

    async with running_app(config) as app:
        source = live_sources(app)["cam1"]
        await wait_until(lambda: source.state == "streaming", 20, "first streaming")

        rtsp_server.kill()
        await wait_until(lambda: source.state == "backing_off", 15, "backing off after kill")
        await asyncio.sleep(6)
        reconnects_while_down = counter_value(app, "vistream_source_reconnects_total", camera="cam1")

        rtsp_server.start()
        await wait_until(lambda: source.state == "streaming", 20, "streaming after restart")

    delays = [float(r.getMessage().split("retry in ")[1].split(" s")[0])
              for r in caplog.records if "retry in " in r.getMessage()]
    # Backoff: 0.2 s doubling to a 2 s cap, so 6 s down gives a handful of attempts, not dozens.
    assert 2 <= reconnects_while_down <= 10
    assert max(delays) <= 2.0
    assert max(delays) > min(delays)


@pytest.mark.asyncio
async def test_camera_connects_once_server_starts_late(tmp_path, sample_video):
    port = free_port()
    server = RtspServer(port=port, mounts={"/late": sample_video}, log_path=tmp_path / "rtsp.log")
    config = app_config([camera("late", f"rtsp://127.0.0.1:{port}/late")], output={"path": str(tmp_path / "r.jsonl")})

    async with running_app(config) as app:
        source = live_sources(app)["late"]
        await wait_until(lambda: source.state == "backing_off", 15, "first failure")
        await asyncio.sleep(2)
        server.start()
        try:
            await wait_until(lambda: source.state == "streaming", 20, "streaming once the server is up")
        finally:
            server.stop()

    assert counter_value(app, "vistream_source_reconnects_total", camera="late") >= 1


@pytest.mark.asyncio
async def test_slow_model_keeps_frames_fresh(rtsp_server, tmp_path, monkeypatch):
    output = tmp_path / "results.jsonl"
    config = app_config([camera("cam1", rtsp_server.url("/cam1"))], output={"path": str(output)},
                        batching={"max_batch_size": 1, "max_wait_ms": 0}, model={"workers": 1})
    inference_delay_s = 0.5
    real_infer = Model.infer

    def slow_infer(self, images):
        time.sleep(inference_delay_s)  # runs in the worker thread, as a slow model would
        return real_infer(self, images)

    monkeypatch.setattr(Model, "infer", slow_infer)

    async with running_app(config) as app:
        await wait_until(lambda: len(read_results(output)) >= 14, 60, "14 results")
        # Read before stopping: a stop analyses the frame still waiting in the slot.
        results = read_results(output)[3:]  # the first second of a new connection arrives in a burst
    ages_s = [r["latency_ms"]["queue"] / 1000 for r in results]
    # The camera sends 25 fps, the model takes 0.5 s a frame: most frames must be superseded,
    # and an analysed frame waits at most about one inference, never seconds behind.
    assert max(ages_s) < inference_delay_s * 2 + 0.5
    dropped = counter_value(app, "vistream_source_frames_dropped_total", camera="cam1", reason="superseded")
    assert dropped > len(results) * 5
    sequences = [r["sequence"] for r in results]
    assert sequences == sorted(sequences)
    assert min(b - a for a, b in zip(sequences, sequences[1:])) >= 5, str(sequences)


@pytest.mark.asyncio
async def test_dead_cameras_do_not_delay_healthy_one(rtsp_server, tmp_path):
    # A listener that accepts connections and never responds: a camera that hangs while opening.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(8)
    refused_port = free_port()
    output = tmp_path / "results.jsonl"
    config = app_config(
        [
            camera("hanging", f"rtsp://127.0.0.1:{blackhole.getsockname()[1]}/x", open_timeout_s=8),
            camera("refused", f"rtsp://127.0.0.1:{refused_port}/x", open_timeout_s=8),
            camera("healthy", rtsp_server.url("/cam1"), open_timeout_s=8),
        ],
        output={"path": str(output)},
    )

    try:
        async with running_app(config) as app:
            started = time.monotonic()
            await wait_until(lambda: any(r["camera_id"] == "healthy" for r in read_results(output)), 20, "healthy result")
            first_result_s = time.monotonic() - started
            await asyncio.sleep(1)
            states = {camera_id: s.state for camera_id, s in live_sources(app).items()}
    finally:
        blackhole.close()

    # The dead cameras' open deadline is 8 s; the healthy camera's first result comes well before.
    assert first_result_s < 5
    assert states["healthy"] == "streaming"
    assert states["hanging"] in ("connecting", "backing_off")
    assert states["refused"] in ("connecting", "backing_off")


@pytest.mark.asyncio
async def test_password_never_appears(tmp_path, sample_video, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    server = RtspServer(port=0, mounts={"/secure": sample_video}, user="operator", password=PASSWORD,
                        log_path=tmp_path / "rtsp.log")
    server.start()
    monkeypatch.setenv("CAM1_PASSWORD", PASSWORD)
    secret_file = tmp_path / "cam3.secret"
    secret_file.write_text(PASSWORD + "\n")
    output = tmp_path / "results.jsonl"
    plain_url = server.url("/secure", credentials=False)
    config = app_config(
        [
            camera("cam1", plain_url, username="operator", password_env="CAM1_PASSWORD", max_frames=5),
            camera("cam2", server.url("/secure"), max_frames=5),  # credentials inside the URL
            camera("cam3", plain_url, username="operator", password_file=str(secret_file), max_frames=5),
            camera("wrong", plain_url, username="operator", password=PASSWORD + "-wrong"),
        ],
        output={"path": str(output)},
    )

    try:
        async with running_app(config) as app:
            await wait_until(lambda: {r["camera_id"] for r in read_results(output)} >= {"cam1", "cam2", "cam3"},
                             30, "results from the three cameras with valid credentials")
            await wait_until(lambda: live_sources(app)["wrong"].state == "backing_off", 20, "wrong password rejected")
            metrics_text = (await asyncio.to_thread(http_get, app.http_port, "/metrics")).body.decode()
            reprs = [repr(s) for s in app.sources] + [repr(app.config), str(app.config)]
    finally:
        server.stop()

    logged = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(caplog.text.splitlines())
    places = {"log records": logged, "results": output.read_text(), "metrics": metrics_text, "reprs": "\n".join(reprs)}
    for place, text in places.items():
        assert PASSWORD not in text, place
        assert "pw-Zq8" not in text, place
    assert "cam2" in metrics_text
    assert "rtsp://***@127.0.0.1" in "\n".join(reprs)


def test_cli_runs_several_rtsp_cameras(rtsp_server, run_cli, tmp_path, result_validator):
    config = tmp_path / "cameras.yaml"
    config.write_text(
        "cameras:\n"
        f"  - id: gate-1\n    url: {rtsp_server.url('/cam1')}\n    fps: 10\n    max_frames: 8\n"
        f"  - id: gate-2\n    url: {rtsp_server.url('/cam2')}\n    max_frames: 8\n"
    )

    run = run_cli("run", "--config", str(config), timeout=90)

    assert run.returncode == 0, run.stderr
    by_camera: dict[str, list[dict]] = {}
    for result in run.results:
        result_validator.validate(result)
        by_camera.setdefault(result["camera_id"], []).append(result)
    assert set(by_camera) == {"gate-1", "gate-2"}
    for results in by_camera.values():
        assert 1 <= len(results) <= 8
        for result in results:
            captured = datetime.fromisoformat(result["captured_at"].replace("Z", "+00:00"))
            published = datetime.fromisoformat(result["published_at"].replace("Z", "+00:00"))
            assert captured <= published
    assert "gate-1: connecting -> streaming" in run.stderr
