"""aiokafka clients built from the config: producer settings that lose nothing, the codec self-test."""

from __future__ import annotations

import os

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, codec
from aiokafka.errors import KafkaConnectionError

from stream.config import KafkaConfig, KafkaResultsConfig
from stream.errors import ConfigError

# Encode and decode functions per codec, as aiokafka uses them for record batches.
_CODECS = {
    "gzip": (codec.has_gzip, codec.gzip_encode, codec.gzip_decode),
    "snappy": (codec.has_snappy, codec.snappy_encode, codec.snappy_decode),
    "lz4": (codec.has_lz4, codec.lz4_encode, codec.lz4_decode),
    "zstd": (codec.has_zstd, codec.zstd_encode, codec.zstd_decode),
}


def check_codec(compression_type: str, setting: str) -> None:
    """Compress and decompress a sample with the codec; raise ConfigError naming `setting` if that fails.

    aiokafka ships gzip only. snappy, lz4 and zstd come from the cramjam package, which
    aiokafka's extras install and which its producer otherwise reports only on first use.
    """
    if compression_type == "none":
        return
    available, encode, decode = _CODECS[compression_type]
    if not available():
        raise ConfigError(
            f"{setting} is {compression_type!r}, but its codec library cramjam is not installed; "
            "install it with pip install 'aiokafka[snappy,lz4,zstd]' or choose gzip or none"
        )
    sample = os.urandom(64) * 64
    try:
        round_trip = decode(encode(sample))
    except Exception as exc:  # a broken native codec raises its own error types
        raise ConfigError(f"{setting} {compression_type!r} fails its self-test: {exc}; choose another codec") from exc
    if round_trip != sample:
        raise ConfigError(f"{setting} {compression_type!r} fails its self-test: data changed in a round trip")


def new_producer(kafka: KafkaConfig, producer: KafkaResultsConfig, client_suffix: str) -> AIOKafkaProducer:
    """Return an unstarted idempotent producer with acks=all; create it on the running event loop.

    Idempotence makes the broker discard the copies that the producer's own retries would
    otherwise write. aiokafka then retries a record until the broker takes it, without end,
    so callers put their own deadline on each record.
    """
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{client_suffix}",
        acks="all",
        enable_idempotence=True,
        compression_type=None if producer.compression_type == "none" else producer.compression_type,
        linger_ms=producer.linger_ms,
        max_batch_size=producer.max_batch_bytes,
        max_request_size=producer.max_message_bytes,
        request_timeout_ms=kafka.request_timeout_ms,
    )


def new_consumer(kafka: KafkaConfig, client_suffix: str) -> AIOKafkaConsumer:
    """Return an unstarted consumer in the frames group, with offsets committed only by the caller."""
    frames = kafka.frames
    return AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{client_suffix}",
        group_id=frames.group_id,
        enable_auto_commit=False,
        auto_offset_reset=frames.auto_offset_reset,
        request_timeout_ms=kafka.request_timeout_ms,
        # Frames of a transaction that was aborted are never analysed.
        isolation_level="read_committed",
    )


def describe_servers(kafka: KafkaConfig) -> str:
    return ",".join(kafka.bootstrap_servers)


def describe_connect_error(exc: BaseException) -> str:
    """Describe why connecting to Kafka failed, without aiokafka's address tuples."""
    if isinstance(exc, KafkaConnectionError):
        return "no broker responded"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
