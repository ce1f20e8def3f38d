"""Results on a Kafka topic, against the real broker of scripts/kafka.sh.

Guards the at-least-once promise of the results sink: every analysed frame's result reaches
the topic, through a broker outage of about 20 s too, and a SIGTERM while the broker is down
still ends the process within shutdown_timeout_s.
"""

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.app import App
from tests.apps import app_config, http_get, wait_for_status, wait_until
from tests.kafka_support import (  # noqa: F401 (fixtures)
    BOOTSTRAP,
    broker_outage,
    count_copies,
    kafka_broker,
    read_topic,
    running_broker,
    unique_topic,
)
from tests.support.rtsp import RtspServer

pytestmark = pytest.mark.kafka

OUTAGE_S = 20.0


def sample_value(app: App, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def test_video_results_reach_topic_and_validate(kafka_broker, run_cli, result_validator):
    topic = unique_topic("results")

    run = run_cli("run", "--max-frames", "20", "--kafka-bootstrap", BOOTSTRAP, "--kafka-results-topic", topic)
    records = asyncio.run(read_topic(topic, expected=20))

    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert len(records) == 20
    results = [json.loads(record.value) for record in records]
    for result in results:
        result_validator.validate(result)
    assert {record.key for record in records} == {b"bikes"}
    assert [result["sequence"] for result in results] == list(range(1, 21))
    assert all(dict(record.headers)["schema"] == b"vistream.result.v1" for record in records)


@pytest.mark.rtsp
@pytest.mark.asyncio
async def test_rtsp_camera_results_reach_topic(kafka_broker, sample_video, tiny_model, result_validator):
    topic = unique_topic("rtsp")
    with RtspServer(0, {"/cam1": sample_video}) as server:
        config = app_config(
            [{"id": "dock-3", "url": server.url("/cam1"), "max_frames": 10}],
            model=tiny_model,
            kafka={"bootstrap_servers": BOOTSTRAP, "results": {"topic": topic}},
        )
        app = App(config, registry=CollectorRegistry())
        await asyncio.wait_for(app.run(), 60)
    # A live camera's slot keeps only the latest frame, so some of the 10 may be superseded.
    analysed = app.pipeline.analysed
    records = await read_topic(topic, expected=analysed)

    assert analysed > 0
    assert len(records) == analysed
    assert {record.key for record in records} == {b"dock-3"}
    for record in records:
        result_validator.validate(json.loads(record.value))


@pytest.mark.asyncio
async def test_results_survive_broker_outage(broker_outage, sample_video, tiny_model, result_validator):
    topic = unique_topic("outage")
    config = app_config(
        [{"id": "gate-1", "url": str(sample_video), "loop": True}],
        model=tiny_model,
        kafka={
            "bootstrap_servers": BOOTSTRAP,
            "health_check_interval_s": 0.5,
            "request_timeout_ms": 5000,
            "results": {"topic": topic, "buffer_results": 2000, "publish_timeout_s": 300},
        },
        shutdown_timeout_s=30,
    )
    app = App(config, registry=CollectorRegistry())
    run = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: app.pipeline is not None and app.pipeline.analysed >= 300, 60, "300 results")
        await asyncio.to_thread(broker_outage.stop)
        stopped_at = time.monotonic()
        analysed_at_stop = app.pipeline.analysed

        not_ready_after_s = await wait_until(lambda: not app.sink.ready, 15, "sink readiness turning false")
        readyz_in_outage = await asyncio.to_thread(http_get, app.http_port, "/readyz")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
        analysed_in_outage = app.pipeline.analysed - analysed_at_stop
        buffered_in_outage = app.sink.buffered
        await asyncio.to_thread(broker_outage.start)

        await wait_until(lambda: app.sink.ready, 30, "sink readiness turning true again")
        await wait_for_status(app.http_port, "/readyz", 200, timeout_s=10)
        await wait_until(lambda: app.sink.buffered == 0, 60, "the buffer emptying after the outage")
        analysed_after_restart = app.pipeline.analysed
        await wait_until(lambda: app.pipeline.analysed >= analysed_after_restart + 300, 60, "300 more results")
    finally:
        app.request_stop()
        await asyncio.wait_for(run, config.shutdown_timeout_s + 10)

    analysed = app.pipeline.analysed
    records = await read_topic(topic, expected=analysed, timeout_s=60)
    results = [json.loads(record.value) for record in records]
    sequences, duplicates = count_copies([(r["camera_id"], r["sequence"]) for r in results])
    print(f"outage test: {analysed} analysed, {analysed_in_outage} during the outage, {len(records)} "
          f"on the topic, {duplicates} duplicates; not ready {not_ready_after_s:.1f} s after the stop")

    assert not_ready_after_s < 10
    assert readyz_in_outage.status == 503
    assert analysed_in_outage > 0
    assert buffered_in_outage > 0
    assert sequences == {("gate-1", sequence) for sequence in range(1, analysed + 1)}
    for result in results[:: max(1, len(results) // 50)]:
        result_validator.validate(result)
    assert sample_value(app, "vistream_sink_results_total", sink="kafka", outcome="failure") == 0
    assert sample_value(app, "vistream_sink_results_total", sink="kafka", outcome="overflow") == 0
    assert sample_value(app, "vistream_sink_results_total", sink="kafka", outcome="success") >= analysed


def test_sigterm_without_broker_exits_in_time(broker_outage, sample_video, tiny_model, tmp_path, run_cli):
    # A looping file keeps results coming, so some wait in the buffer when the broker stops. The
    # kafka:// camera adds a consumer to close and offsets to commit without a broker.
    topic, frames_topic = unique_topic("sigterm"), unique_topic("frames")
    published = run_cli("publish-frames", str(sample_video), "--topic", frames_topic, "--bootstrap", BOOTSTRAP)
    assert published.returncode == 0, published.stderr
    shutdown_timeout_s = 6.0
    config = tmp_path / "vistream.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cameras": [
                    {"id": "gate-1", "url": str(sample_video), "loop": True},
                    {"id": "lobby", "url": f"kafka://{frames_topic}"},
                ],
                "model": tiny_model,
                "kafka": {
                    "bootstrap_servers": BOOTSTRAP,
                    "results": {"topic": topic},
                    "frames": {"group_id": unique_topic("group")},
                },
                "http": {"port": 0},
                "shutdown_timeout_s": shutdown_timeout_s,
            }
        )
    )
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=tmp_path,
        )
        try:
            delivered = asyncio.run(read_topic(topic, expected=100, timeout_s=60, extra_wait_s=0))
            broker_outage.stop()
            time.sleep(2.0)  # results pile up in the buffer with no broker to take them

            signalled_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=shutdown_timeout_s + 30)
            exit_s = time.monotonic() - signalled_at
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = stderr_path.read_text()
    print(f"SIGTERM test: exited {exit_s:.1f} s after SIGTERM with the broker down")

    assert len(delivered) >= 100, log
    assert returncode == 0, log
    # The stop itself is bounded by shutdown_timeout_s; the rest is the interpreter exiting.
    assert exit_s < shutdown_timeout_s + 2.0, log
    assert "were not delivered to Kafka" in log
    assert "Traceback" not in log
