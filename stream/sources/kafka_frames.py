"""A kafka:// camera: frames read from a topic in a consumer group, committed at least once.

Each message is one encoded image (see `stream.kafka_frame_format`). A frame is done once its
result is acknowledged by the results topic (or written by the JSON Lines sink), or once its
dead letter is acknowledged. Per partition, the group commits one past the last frame of the
unbroken run of done frames. After a crash the group reads again from there, so a frame is
analysed at least once, and its result can appear twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from stream.config import KAFKA_TOPIC_PATTERN, CameraConfig, KafkaConfig
from stream.errors import ConfigError, SinkError, SourceError, VistreamError
from stream.frames import Frame, FrameSlot
from stream.health import Health
from stream.kafka_client import describe_connect_error, describe_servers, new_consumer
from stream.kafka_dead_letters import DeadLetterWriter
from stream.kafka_frame_format import DecodedFrame, FrameLimits, InvalidFrame, read_frame
from stream.kafka_offsets import OffsetTracker
from stream.kafka_publisher import SHUTDOWN, TIMEOUT
from stream.metrics import Metrics

log = logging.getLogger(__name__)

SCHEME = "kafka://"
# How long one fetch waits for records, so that a stop request is seen within about this time.
POLL_TIMEOUT_S = 0.5
# Seconds between warnings about dead letters; the ones in between are logged at DEBUG.
DEAD_LETTER_LOG_INTERVAL_S = 10.0


def topic_of(camera: CameraConfig) -> str:
    """Return the topic of a kafka://TOPIC camera; raise ConfigError for settings it cannot use."""
    topic = camera.url[len(SCHEME) :]
    if not re.match(KAFKA_TOPIC_PATTERN, topic):
        raise ConfigError(
            f"camera {camera.camera_id}: {camera.url!r} does not name a Kafka topic; "
            "use kafka://TOPIC with letters, digits, '.', '_' and '-'"
        )
    for option, value in (("fps", camera.fps), ("loop", camera.loop)):
        if value:
            raise ConfigError(f"camera {camera.camera_id}: {option} is not supported for kafka:// cameras; remove it")
    return topic


class KafkaFramesSource:
    """Consumes one frames topic into one frame slot, which must use the block policy.

    Frames keep their order per partition. Metrics are labelled with this camera's configured
    id, while each result's camera_id comes from the message's camera_id header.
    `on_fatal` is called when a frame's result or dead letter could not be delivered: its
    offset can then never be committed, so the App stops and a restart reads it again.
    """

    def __init__(
        self,
        camera: CameraConfig,
        slot: FrameSlot,
        kafka: KafkaConfig,
        metrics: Metrics,
        health: Health | None = None,
        on_fatal: Callable[[VistreamError], None] | None = None,
    ):
        self.camera = camera
        self.camera_id = camera.camera_id
        self.topic = topic_of(camera)
        self.slot = slot
        self.kafka = kafka
        self.metrics = metrics
        self._set_state = health.set_camera_state if health else metrics.set_camera_state
        self._on_fatal = on_fatal
        self._limits = FrameLimits(kafka.frames.max_message_bytes, kafka.frames.max_image_pixels)
        self._request_timeout_s = kafka.request_timeout_ms / 1000
        self._offsets = OffsetTracker()
        self._dead_letters = DeadLetterWriter(
            kafka, f"dead-letters-{self.camera_id}", self._dead_letter_written, self._dead_letter_failed
        )
        self._consumer = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._frames_read = 0
        self._failed = False
        self._dead_letters_since_warning = 0
        self._dead_letter_warned_at = 0.0

    def check(self) -> None:
        """Nothing to check without the event loop; `start` connects and reports problems."""

    async def start(self) -> None:
        """Join the consumer group and start the dead-letter producer; raise SourceError if Kafka is unreachable."""
        self._consumer = new_consumer(self.kafka, f"frames-{self.camera_id}")
        self._consumer.subscribe([self.topic], listener=_CommitOnRevoke(self))
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await self._consumer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._close_clients(self._request_timeout_s)
            raise SourceError(
                f"camera {self.camera_id}: cannot connect to Kafka at {describe_servers(self.kafka)}: "
                f"{describe_connect_error(exc)}; check kafka.bootstrap_servers (--kafka-bootstrap) and that a broker runs there"
            ) from None
        try:
            await self._dead_letters.start()
        except SinkError as exc:
            await self._close_clients(self._request_timeout_s)
            raise SourceError(f"camera {self.camera_id}: {exc}") from None
        log.info(
            "camera %s: consuming topic %s in group %s", self.camera_id, self.topic, self.kafka.frames.group_id
        )

    def stop(self) -> None:
        """Stop fetching; frames already in the slot are still analysed. Call it on the event loop."""
        self._stop.set()

    async def run(self) -> None:
        """Fetch frames into the slot until stopped or max_frames; commit done frames as they finish."""
        committer = asyncio.create_task(self._commit_forever(), name=f"commit-{self.camera_id}")
        self._set_state(self.camera_id, "connecting")
        try:
            await self._consume()
        except KafkaError as exc:
            self._fail(SourceError(f"camera {self.camera_id}: consuming {self.topic} failed: {exc}"))
        finally:
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            self.slot.close()
            self._set_state(self.camera_id, "stopped")

    async def _consume(self) -> None:
        """Fetch until stopped or max_frames; the camera is streaming once the group assigns it partitions."""
        max_frames = self.camera.max_frames
        streaming = False
        while not self._stop.is_set():
            room = self.slot.capacity - len(self.slot.frames)
            if room <= 0:
                await self._wait_for_room()
                continue
            if max_frames:
                room = min(room, max_frames - self._frames_read)

            try:
                batches = await self._consumer.getmany(timeout_ms=int(POLL_TIMEOUT_S * 1000), max_records=room)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                log.warning("camera %s: fetching from %s failed: %s; retrying", self.camera_id, self.topic, exc)
                await asyncio.sleep(POLL_TIMEOUT_S)
                continue
            if not streaming and self._consumer.assignment():
                self._set_state(self.camera_id, "streaming")
                streaming = True
            records = [record for partition_records in batches.values() for record in partition_records]
            if records:
                await self._handle(records)
            if max_frames and self._frames_read >= max_frames:
                log.info("camera %s: read max_frames %d frames; stopping", self.camera_id, max_frames)
                return

    async def _wait_for_room(self) -> None:
        """Wait for room in the slot with fetching paused, polling so the group keeps this member."""
        paused = self._consumer.assignment()
        self._consumer.pause(*paused)
        try:
            while len(self.slot.frames) >= self.slot.capacity and not self._stop.is_set():
                try:
                    async with asyncio.timeout(POLL_TIMEOUT_S):
                        await self.slot.wait_for_space()
                except TimeoutError:
                    # A poll, even of paused partitions, shows the group this member is alive;
                    # without one for max_poll_interval_ms the member is removed. A partition
                    # assigned meanwhile is not paused, and its records must not be skipped.
                    batches = await self._consumer.getmany(timeout_ms=0)
                    records = [record for partition_records in batches.values() for record in partition_records]
                    if records:
                        await self._handle(records)
        finally:
            self._consumer.resume(*(paused & self._consumer.assignment()))

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        for record in records:
            self._offsets.fetched((record.topic, record.partition), record.offset)
        outcomes = await asyncio.to_thread(self._read_all, records)

        for record, outcome in zip(records, outcomes):
            origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
            if isinstance(outcome, InvalidFrame):
                await self._send_to_dead_letters(record, origin, outcome)
                continue
            frame = Frame(
                camera_id=outcome.camera_id,
                sequence=outcome.sequence,
                captured_at=outcome.captured_at,
                image=outcome.image,
                decode_s=outcome.decode_s,
                origin=origin,
                configured_camera_id=self.camera_id,
            )
            await self.slot.put(frame)
            self.metrics.frame_received(self.camera_id)
            self._frames_read += 1

    def _read_all(self, records: list[ConsumerRecord]) -> list[DecodedFrame | InvalidFrame]:
        outcomes: list[DecodedFrame | InvalidFrame] = []
        for record in records:
            try:
                outcomes.append(
                    read_frame(
                        record.value,
                        record.headers,
                        self._limits,
                        default_camera_id=self.camera_id,
                        default_sequence=record.offset,
                        default_captured_at=record.timestamp / 1000.0,
                    )
                )
            except InvalidFrame as invalid:
                outcomes.append(invalid)
        return outcomes

    async def _send_to_dead_letters(
        self, record: ConsumerRecord, origin: dict[str, Any], invalid: InvalidFrame
    ) -> None:
        self.metrics.frame_dropped(self.camera_id, invalid.reason)
        self._log_dead_letter(origin, invalid.reason, invalid.detail)
        await self._dead_letters.write(
            origin, invalid.reason, invalid.detail, key=record.key, value=record.value, headers=list(record.headers)
        )

    def dead_letter_dropped(self, frames: list[Frame], reason: str) -> None:
        """Send this camera's frames among `frames`, dropped after they left the slot, to the dead-letter topic."""
        for frame in frames:
            if frame.origin is None or frame.origin["topic"] != self.topic:
                continue
            self._log_dead_letter(frame.origin, reason, "inference failed for its batch")
            task = asyncio.create_task(
                self._dead_letters.write(
                    frame.origin, reason, "inference failed for its batch", key=frame.camera_id.encode("utf-8")
                ),
                name=f"dead-letter-{self.camera_id}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _log_dead_letter(self, origin: dict[str, Any], reason: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._dead_letter_warned_at < DEAD_LETTER_LOG_INTERVAL_S:
            self._dead_letters_since_warning += 1
            log.debug("camera %s: %s goes to the dead-letter topic: %s (%s)", self.camera_id, origin, reason, detail)
            return
        earlier = self._dead_letters_since_warning
        log.warning(
            "camera %s: frame at %s partition %d offset %d goes to the dead-letter topic %s: %s (%s)%s",
            self.camera_id, origin["topic"], origin["partition"], origin["offset"], self._dead_letters.topic,
            reason, detail, f"; {earlier} more since the last warning" if earlier else "",
        )
        self._dead_letters_since_warning = 0
        self._dead_letter_warned_at = now

    # Delivery reports, from the results sink and the dead-letter writer.

    def result_delivered(self, origin: dict[str, Any]) -> None:
        if origin.get("topic") == self.topic:
            self._offsets.done((origin["topic"], origin["partition"]), origin["offset"])

    def result_failed(self, origin: dict[str, Any], reason: str) -> None:
        if origin.get("topic") == self.topic:
            self._delivery_failed(origin, reason, "the result")

    def _dead_letter_written(self, origin: dict[str, Any]) -> None:
        self._offsets.done((origin["topic"], origin["partition"]), origin["offset"])

    def _dead_letter_failed(self, origin: dict[str, Any], reason: str) -> None:
        self._delivery_failed(origin, reason, "the dead letter")

    def _delivery_failed(self, origin: dict[str, Any], reason: str, message_kind: str) -> None:
        if reason == SHUTDOWN:
            return  # left uncommitted; close() logs it
        if reason == TIMEOUT:
            advice = "to ride out longer outages, raise kafka.results.publish_timeout_s"
        else:
            advice = "check kafka.results.max_message_bytes and the topic's max.message.bytes and permissions"
        self._fail(
            SinkError(
                f"camera {self.camera_id}: {message_kind} for {origin['topic']} partition {origin['partition']} "
                f"offset {origin['offset']} was not delivered ({reason}); stopping, so that the next start reads "
                f"it again from the last committed offset; {advice}"
            )
        )

    def _fail(self, error: VistreamError) -> None:
        if self._failed:
            return
        self._failed = True
        log.error("%s", error)
        self._stop.set()
        if self._on_fatal is not None:
            self._on_fatal(error)

    # Commits.

    async def _commit_forever(self) -> None:
        interval_s = self.kafka.frames.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            await self._commit(self._request_timeout_s)

    async def _commit(self, timeout_s: float, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the done offsets of assigned partitions (or of `partitions`); log a failure.

        A failed commit is retried by the next one, which commits the same offsets or later ones.
        """
        if self._consumer is None:
            return
        allowed = partitions if partitions is not None else self._consumer.assignment()
        offsets = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in self._offsets.to_commit().items()
            if TopicPartition(topic, partition) in allowed
        }
        if not offsets:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._consumer.commit(offsets)
        except TimeoutError:
            log.warning("camera %s: committing offsets timed out after %.1f s", self.camera_id, timeout_s)
            return
        except (CommitFailedError, KafkaError) as exc:
            log.warning("camera %s: committing offsets failed: %s", self.camera_id, exc)
            return
        self._offsets.committed({(tp.topic, tp.partition): offset for tp, offset in offsets.items()})
        log.debug("camera %s: committed %s", self.camera_id, offsets)

    async def close(self, timeout_s: float) -> None:
        """Write the pending dead letters, commit what is done and leave the group, all within `timeout_s`.

        Offsets that stay uncommitted are logged; the next start reads those frames again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, (deadline - loop.time()) * 0.2))
        await self._dead_letters.stop(max(0.1, (deadline - loop.time()) * 0.5))
        await self._commit(max(0.1, (deadline - loop.time()) * 0.6))
        self._log_not_committed()
        await self._close_clients(max(0.5, deadline - loop.time()))

    def _log_not_committed(self) -> None:
        for (topic, partition), offset in sorted(self._offsets.to_commit().items()):
            last = self._offsets.last_committed((topic, partition))
            log.error(
                "camera %s: committing offset %d of %s partition %d to Kafka at %s failed; the next start "
                "reads again from %s", self.camera_id, offset, topic, partition, describe_servers(self.kafka),
                f"offset {last}" if last is not None else "the offset committed before this run",
            )
        for (topic, partition), (first, count) in sorted(self._offsets.not_done().items()):
            log.warning(
                "camera %s: %s partition %d: %d frames from offset %d were not finished and stay uncommitted; "
                "the next start reads them again", self.camera_id, topic, partition, count, first,
            )

    async def _close_clients(self, timeout_s: float) -> None:
        # Stopping the dead-letter writer a second time does nothing. AIOKafkaConsumer.stop sends
        # LeaveGroup and can wait without end when no broker responds.
        await self._dead_letters.stop(timeout_s / 2)
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await consumer.stop()
        except TimeoutError:
            log.warning(
                "camera %s: the Kafka consumer did not close within %.1f s; the group removes it after its "
                "session timeout", self.camera_id, timeout_s,
            )
        except asyncio.CancelledError:
            # aiokafka 0.14's Fetcher.close cancels the fetch requests in flight and then awaits
            # them, so with no broker AIOKafkaConsumer.stop raises CancelledError that no one
            # asked for, before it closes its connections. Those are closed here instead.
            if asyncio.current_task().cancelling():
                raise
            log.debug("camera %s: the Kafka consumer stopped with pending fetches", self.camera_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, timeout_s / 2)):
                    await consumer._client.close()


class _CommitOnRevoke(ConsumerRebalanceListener):
    """Rebalance listener that commits the done offsets of revoked partitions and stops tracking them."""

    def __init__(self, source: KafkaFramesSource):
        self.source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        await self.source._commit(self.source._request_timeout_s, partitions=set(revoked))
        self.source._offsets.forget({(tp.topic, tp.partition) for tp in revoked})
        log.info("camera %s: partitions revoked: %s", self.source.camera_id, sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("camera %s: partitions assigned: %s", self.source.camera_id, sorted(tp.partition for tp in assigned))
