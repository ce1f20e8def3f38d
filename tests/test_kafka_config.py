"""Kafka settings: defaults, rejected values, the codec self-test and settings kafka:// cameras cannot use."""

import pytest

from stream import kafka_client
from stream.config import CameraConfig, derive_camera_id, validate_config
from stream.errors import ConfigError
from stream.kafka_client import check_codec
from stream.sources.kafka_frames import topic_of


def test_defaults_lose_nothing():
    kafka = validate_config({}, "test").kafka

    assert kafka.results.topic is None
    assert kafka.results.overflow == "block"
    assert kafka.results.compression_type == "lz4"
    assert kafka.frames.auto_offset_reset == "earliest"


def test_bootstrap_servers_accepts_comma_list():
    kafka = validate_config({"kafka": {"bootstrap_servers": "a:9092, b:9093"}}, "test").kafka

    assert kafka.bootstrap_servers == ["a:9092", "b:9093"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"results": {"topics": "x"}}, "unknown key 'kafka.results.topics'"),
        ({"results": {"topic": "no spaces allowed"}}, "kafka.results.topic"),
        ({"results": {"overflow": "drop_newest"}}, "kafka.results.overflow"),
        ({"results": {"publish_timeout_s": 0}}, "kafka.results.publish_timeout_s"),
        ({"frames": {"max_image_pixels": 0}}, "kafka.frames.max_image_pixels"),
    ],
)
def test_invalid_kafka_settings_rejected(section, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"kafka": section}, "test")


@pytest.mark.parametrize(
    ("camera", "message"),
    [
        ({"url": "kafka://"}, "does not name a Kafka topic"),
        ({"url": "kafka://a/b"}, "does not name a Kafka topic"),
        ({"url": "kafka://frames", "fps": 5}, "fps is not supported for kafka:// cameras"),
        ({"url": "kafka://frames", "loop": True}, "loop is not supported for kafka:// cameras"),
    ],
)
def test_kafka_camera_settings_rejected(camera, message):
    with pytest.raises(ConfigError, match=message):
        topic_of(CameraConfig(id="lobby", **camera))


def test_kafka_camera_topic():
    assert topic_of(CameraConfig(id="lobby", url="kafka://vistream.frames")) == "vistream.frames"


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_codec_self_test_passes(codec):
    check_codec(codec, "kafka.results.compression_type")


def test_missing_codec_library_named(monkeypatch):
    _, encode, decode = kafka_client._CODECS["zstd"]
    monkeypatch.setitem(kafka_client._CODECS, "zstd", (lambda: False, encode, decode))

    with pytest.raises(ConfigError, match=r"kafka.results.compression_type is 'zstd'.*cramjam"):
        check_codec("zstd", "kafka.results.compression_type")


def test_drop_oldest_rejected_for_kafka_cameras(run_cli, tmp_path):
    config = tmp_path / "vistream.yaml"
    config.write_text(
        "cameras:\n  - id: lobby\n    url: kafka://frames\n"
        "kafka:\n  results:\n    topic: results\n    overflow: drop_oldest\n"
    )

    run = run_cli("run", "--config", str(config))

    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("vistream: error: camera lobby reads Kafka frames")
    assert "kafka.results.overflow: block" in run.stderr


def test_kafka_camera_id_is_topic_name():
    assert derive_camera_id("kafka://vistream.frames") == "vistream.frames"


def test_publish_frames_rejects_bad_topic(run_cli, sample_video):
    run = run_cli("publish-frames", str(sample_video), "--topic", "no spaces")

    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "vistream: error: --topic 'no spaces' is not a Kafka topic name; use letters, digits, '.', '_' and '-'"
    ]
