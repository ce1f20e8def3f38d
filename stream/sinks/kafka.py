"""Results to a Kafka topic: one schema v1 JSON message per analysed frame, keyed by camera id.

The key keeps each camera's results in one partition, so they stay in order. Delivery is
at least once: the producer uses acks=all and idempotence, and a result that waits longer
than `publish_timeout_s` for the broker counts as failed.
"""

from __future__ import annotations

import logging
from typing import Any

from stream.config import KafkaConfig
from stream.kafka_client import check_codec, describe_servers, new_producer
from stream.kafka_delivery import DeliveryListener
from stream.kafka_publisher import KafkaPublisher, OutgoingRecord
from stream.metrics import Metrics
from stream.results import SCHEMA_ID, encode

log = logging.getLogger(__name__)

SCHEMA_HEADER = "schema"


class KafkaSink:
    """Publishes results without waiting for each delivery; see `KafkaPublisher` for buffering and deadlines."""

    def __init__(self, kafka: KafkaConfig, metrics: Metrics, stop_timeout_s: float = 10.0):
        results = kafka.results
        if results.topic is None:
            raise ValueError("KafkaSink needs kafka.results.topic")
        self.name = "kafka"
        self.topic = results.topic
        self.kafka = kafka
        # Maximum seconds that stop() takes; the App sets it to the time left for flushing.
        self.stop_timeout_s = stop_timeout_s
        self._listeners: list[DeliveryListener] = []
        self._publisher = KafkaPublisher(
            self.name,
            lambda: new_producer(kafka, results, "results"),
            capacity=results.buffer_results,
            overflow=results.overflow,
            publish_timeout_s=results.publish_timeout_s,
            health_check_interval_s=kafka.health_check_interval_s,
            request_timeout_s=kafka.request_timeout_ms / 1000,
            on_delivered=self._delivered,
            on_failed=self._failed,
            metrics=metrics,
            servers=describe_servers(kafka),
        )

    @property
    def ready(self) -> bool:
        """False before start, after stop and while no broker responds."""
        return self._publisher.ready

    @property
    def buffered(self) -> int:
        return self._publisher.buffered

    def add_delivery_listener(self, listener: DeliveryListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        """Check the compression codec and connect; raise ConfigError or SinkError naming the setting to fix."""
        check_codec(self.kafka.results.compression_type, "kafka.results.compression_type")
        await self._publisher.start()
        log.info("publishing results to Kafka topic %s", self.topic)

    async def publish(self, results: list[dict[str, Any]]) -> None:
        records = [
            OutgoingRecord(
                self.topic,
                encode(result),
                key=result["camera_id"].encode("utf-8"),
                headers=[(SCHEMA_HEADER, SCHEMA_ID.encode("ascii"))],
                token=result.get("source"),
            )
            for result in results
        ]
        await self._publisher.publish(records)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Deliver the buffered results within `timeout_s` (default `stop_timeout_s`), then disconnect."""
        await self._publisher.stop(self.stop_timeout_s if timeout_s is None else timeout_s)

    def _delivered(self, record: OutgoingRecord) -> None:
        if record.token is not None:
            for listener in self._listeners:
                listener.result_delivered(record.token)

    def _failed(self, record: OutgoingRecord, reason: str) -> None:
        if record.token is not None:
            for listener in self._listeners:
                listener.result_failed(record.token, reason)
