"""Frames that cannot be analysed, written to the dead-letter topic with the reason in a header.

A dead letter keeps the original key and headers and adds `dead_letter.reason`,
`dead_letter.detail` and the original topic, partition and offset. Its value is the original
image, with two exceptions that have an empty value: an image that would not fit in one produce
request (`max_message_bytes`), and a frame whose inference failed, because its encoded image is
no longer kept. Those are read from the original topic at the offset the headers give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stream.config import KafkaConfig
from stream.kafka_client import check_codec, describe_servers, new_producer
from stream.kafka_frame_format import dead_letter_headers
from stream.kafka_publisher import KafkaPublisher, OutgoingRecord

# Dead letters held while they wait for acknowledgement. Each can be as large as a produce
# request, so the buffer is small; when it is full, the camera waits.
BUFFER_RECORDS = 64
# Room left in a produce request for the key, the headers and the record overhead, in bytes.
REQUEST_HEADROOM_BYTES = 16_384

Origin = dict[str, Any]  # topic, partition and offset of the original message


class DeadLetterWriter:
    """Writes dead letters through its own producer and reports each outcome with the frame's origin."""

    def __init__(
        self,
        kafka: KafkaConfig,
        name: str,
        on_written: Callable[[Origin], None],
        on_failed: Callable[[Origin, str], None],
    ):
        self.kafka = kafka
        self.topic = kafka.frames.dead_letter_topic
        self.max_value_bytes = kafka.results.max_message_bytes - REQUEST_HEADROOM_BYTES
        self._publisher = KafkaPublisher(
            name,
            lambda: new_producer(kafka, kafka.results, "dead-letters"),
            capacity=BUFFER_RECORDS,
            overflow="block",
            publish_timeout_s=kafka.results.publish_timeout_s,
            health_check_interval_s=kafka.health_check_interval_s,
            request_timeout_s=kafka.request_timeout_ms / 1000,
            on_delivered=lambda record: on_written(record.token),
            on_failed=lambda record, reason: on_failed(record.token, reason),
            servers=describe_servers(kafka),
        )

    async def start(self) -> None:
        check_codec(self.kafka.results.compression_type, "kafka.results.compression_type")
        await self._publisher.start()

    async def write(
        self,
        origin: Origin,
        reason: str,
        detail: str,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Buffer one dead letter; wait only while the buffer is full."""
        if value is not None and len(value) > self.max_value_bytes:
            value = None
        record = OutgoingRecord(
            self.topic,
            value or b"",
            key=key,
            headers=dead_letter_headers(
                headers or [], reason, detail, origin["topic"], origin["partition"], origin["offset"]
            ),
            token=origin,
        )
        await self._publisher.publish([record])

    async def stop(self, timeout_s: float) -> None:
        await self._publisher.stop(timeout_s)
