"""A bounded buffer with a deadline per record in front of an aiokafka producer.

aiokafka's `send` returns one future per record, and with idempotence its producer retries a
record for as long as no broker takes it. `KafkaPublisher` adds what a service needs around
that: a buffer of a configured size with a named overflow policy, a publish deadline per record,
a periodic broker check for readiness, and a stop that flushes within a time limit.

Every record ends in exactly one outcome, reported once through `on_delivered` or `on_failed`:
delivered (acknowledged by the broker), or failed with one of the reasons below.

aiokafka 0.14 does not always retry: a batch that waits longer than request_timeout_ms for a
partition leader fails, and its sequence numbers are used up, so the broker rejects the next
batch with OutOfOrderSequenceNumber and the producer stops working. The publisher therefore
sends such records again, and replaces a producer that failed this way with a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError, KafkaTimeoutError

from stream.errors import SinkError
from stream.kafka_client import describe_connect_error
from stream.metrics import Metrics

log = logging.getLogger(__name__)

BLOCK = "block"
DROP_OLDEST = "drop_oldest"

# Reasons passed to on_failed.
TIMEOUT = "timeout"  # not acknowledged within publish_timeout_s
REJECTED = "rejected"  # the client or the broker refused it, e.g. a record over max_message_bytes
OVERFLOW = "overflow"  # dropped by drop_oldest to make room
SHUTDOWN = "shutdown"  # still buffered when the stop deadline passed

# Errors about one record, which sending it again cannot fix.
RECORD_ERRORS = (
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidTimestampError,
    kafka_errors.InvalidTopicError,
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.PolicyViolationError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.UnsupportedForMessageFormatError,
)

# Seconds between retries of a send that aiokafka could not queue, between attempts to start a
# new producer, and between failure summaries.
SEND_RETRY_BACKOFF_S = 0.2
RESTART_BACKOFF_S = 1.0
FAILURE_LOG_INTERVAL_S = 10.0


@dataclass(eq=False)
class OutgoingRecord:
    """One Kafka record waiting for its outcome. `token` is handed back in the outcome callbacks."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    token: Any = None
    deadline: float = 0.0  # time.monotonic() by which the broker must acknowledge it
    order: int = 0  # position in publishing order, to send retried records in order
    resolved: bool = False


class KafkaPublisher:
    """Sends records through one producer, holding at most `capacity` that await acknowledgement.

    `publish` returns once the records are buffered; it waits only when the buffer is full under
    the block policy. Runs on the event loop only.
    """

    def __init__(
        self,
        name: str,
        new_producer: Callable[[], AIOKafkaProducer],
        *,
        capacity: int,
        overflow: str,
        publish_timeout_s: float,
        health_check_interval_s: float,
        request_timeout_s: float,
        on_delivered: Callable[[OutgoingRecord], None],
        on_failed: Callable[[OutgoingRecord, str], None],
        metrics: Metrics | None = None,
        servers: str = "",
    ):
        if overflow not in (BLOCK, DROP_OLDEST):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self.publish_timeout_s = publish_timeout_s
        self._new_producer = new_producer
        self._health_check_interval_s = health_check_interval_s
        self._request_timeout_s = request_timeout_s
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._metrics = metrics
        self._servers = servers

        self._producer: AIOKafkaProducer | None = None
        self._queue: deque[OutgoingRecord] = deque()  # not yet handed to the producer
        self._sending: OutgoingRecord | None = None  # inside producer.send
        self._inflight: dict[OutgoingRecord, None] = {}  # handed over, oldest first
        self._retry: list[OutgoingRecord] = []  # failed by the producer, to be queued again
        self._published = 0
        self._restart_reason: str | None = None
        self._queued = asyncio.Event()
        self._space = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: set[asyncio.Task] = set()
        self._reachable = False
        self._running = False
        self._failures: Counter[str] = Counter()
        self._last_error = ""
        self._failures_logged_at = time.monotonic()

    @property
    def buffered(self) -> int:
        """Records accepted and not yet delivered or failed."""
        return len(self._queue) + (self._sending is not None) + len(self._inflight) + len(self._retry)

    @property
    def ready(self) -> bool:
        """True while running and the last broker check or delivery succeeded. Safe from any thread."""
        return self._running and self._reachable

    async def start(self) -> None:
        """Connect to the cluster and start sending; raise SinkError if no broker responds in time."""
        self._producer = self._new_producer()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await self._producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._close_producer(self._request_timeout_s)
            raise SinkError(
                f"{self.name}: cannot connect to Kafka at {self._servers}: {describe_connect_error(exc)}; "
                "check kafka.bootstrap_servers (--kafka-bootstrap) and that a broker runs there"
            ) from None

        self._running = True
        self._reachable = True
        log.info("%s: connected to Kafka at %s", self.name, self._servers)
        for coro, task_name in (
            (self._send_forever(), "send"),
            (self._expire_forever(), "expire"),
            (self._check_broker_forever(), "broker-check"),
        ):
            task = asyncio.create_task(coro, name=f"{self.name}-{task_name}")
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        self._update_gauges()

    async def publish(self, records: list[OutgoingRecord]) -> None:
        """Buffer records for sending, in order; under the block policy, wait while the buffer is full."""
        if not self._running:
            raise RuntimeError(f"{self.name}: publish() called before start() or after stop()")
        for record in records:
            if not await self._make_room():
                self._resolve_failed(record, OVERFLOW)
                continue
            record.deadline = time.monotonic() + self.publish_timeout_s
            record.order = self._published
            self._published += 1
            self._queue.append(record)
            self._drained.clear()
            self._queued.set()
        self._update_gauges()

    async def _make_room(self) -> bool:
        """Return True once the buffer has room for one record; False if that record is to be dropped."""
        if self.overflow == BLOCK:
            while self.buffered >= self.capacity:
                self._space.clear()
                await self._space.wait()
            return True

        if self.buffered < self.capacity:
            return True
        if self._queue:
            self._resolve_failed(self._queue.popleft(), OVERFLOW)
            return True
        # Every buffered record is already inside the producer, which cannot take one back, so
        # drop_oldest drops the new record instead.
        return False

    async def stop(self, timeout_s: float) -> None:
        """Deliver what is buffered within `timeout_s`, then close the producer; log what was not delivered."""
        if not self._tasks:
            # Never started, or stopped already: at most a producer from a failed start is left.
            await self._close_producer(timeout_s)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        undelivered = self.buffered
        if undelivered:
            log.info("%s: delivering %d buffered records within %.1f s", self.name, undelivered, timeout_s)
        # Part of the time is kept for closing the producer, which needs a round trip or two.
        close_reserve_s = min(1.0, timeout_s * 0.1)
        try:
            async with asyncio.timeout_at(deadline - close_reserve_s):
                await self._drained.wait()
        except TimeoutError:
            pass

        self._running = False
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = self._abandon_buffered()
        if left:
            log.error(
                "%s: %d records were not delivered to Kafka at %s before the %.1f s stop deadline",
                self.name, left, self._servers, timeout_s,
            )
        self._log_failures(force=True)
        await self._close_producer(max(0.1, deadline - loop.time()))

    async def _close_producer(self, timeout_s: float) -> None:
        # AIOKafkaProducer.stop waits until every record it has buffered is delivered, which
        # never happens without a broker, so it gets a deadline.
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await producer.stop()
        except TimeoutError:
            log.warning(
                "%s: the Kafka producer did not close within %.1f s; its connections close when the process exits",
                self.name, timeout_s,
            )

    def _abandon_buffered(self) -> int:
        left = [*self._inflight, *self._retry, *([self._sending] if self._sending else []), *self._queue]
        self._inflight.clear()
        self._retry.clear()
        self._sending = None
        self._queue.clear()
        for record in left:
            self._resolve_failed(record, SHUTDOWN)
        return len(left)

    async def _send_forever(self) -> None:
        """Hand queued records to the producer in order without waiting for their delivery."""
        while True:
            if self._restart_reason is not None:
                await self._restart_producer()
                continue
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            record = self._queue.popleft()
            self._sending = record
            try:
                future = await self._producer.send(record.topic, record.value, key=record.key, headers=record.headers)
            except KafkaError as exc:
                self._sending = None
                if record.resolved:
                    self._after_removal()
                elif isinstance(exc, RECORD_ERRORS):
                    self._resolve_failed(record, REJECTED, exc)
                else:
                    # The producer's batch for this partition is full and no broker took it, the
                    # topic's metadata is not there yet, or the producer has failed. The record
                    # goes back first in line, and a failed producer is replaced before it is sent.
                    self._queue.appendleft(record)
                    self._restart_if_broken(exc)
                    await asyncio.sleep(SEND_RETRY_BACKOFF_S)
                continue

            self._sending = None
            if record.resolved:
                # Its deadline passed while the producer waited for room; it is no longer counted.
                self._after_removal()
            else:
                self._inflight[record] = None
            future.add_done_callback(lambda done, record=record: self._on_sent(record, done))

    def _on_sent(self, record: OutgoingRecord, future: asyncio.Future) -> None:
        self._inflight.pop(record, None)
        error = None if future.cancelled() else future.exception()
        if record.resolved:
            # Its deadline passed first, so the failure remains, and the broker may now have a copy.
            if error is None and not future.cancelled():
                log.debug("%s: a record was delivered after its publish deadline", self.name)
            return

        if error is None and not future.cancelled():
            self._set_reachable(True)
            self._resolve(record)
            if self._metrics is not None:
                self._metrics.published.labels(self.name, "success").inc()
            self._on_delivered(record)
        elif isinstance(error, RECORD_ERRORS):
            self._resolve_failed(record, REJECTED, error)
        else:
            self._last_error = str(error) if error else "the producer cancelled the send"
            self._retry.append(record)
            if len(self._retry) == 1:
                # Failures of one batch arrive as one callback per record; they are queued
                # again together, in publishing order, after the last of them.
                asyncio.get_running_loop().call_soon(self._queue_retries)
            if isinstance(error, KafkaError):
                self._restart_if_broken(error)

    def _queue_retries(self) -> None:
        retries = sorted(self._retry, key=lambda record: record.order)
        self._retry.clear()
        log.debug("%s: sending %d records again", self.name, len(retries))
        self._queue.extendleft(reversed(retries))
        self._queued.set()

    def _restart_if_broken(self, error: KafkaError) -> None:
        """Replace the producer after an error that is not about one record and that retrying does not cure."""
        if error.retriable or isinstance(error, KafkaTimeoutError) or self._restart_reason is not None:
            return
        self._restart_reason = f"{type(error).__name__}: {error}"
        self._queued.set()

    async def _restart_producer(self) -> None:
        """Close the failed producer and start a new one, retrying until one starts; records wait meanwhile."""
        log.warning("%s: replacing the Kafka producer after %s", self.name, self._restart_reason)
        await self._close_producer(self._request_timeout_s)
        while True:
            self._producer = self._new_producer()
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    await self._producer.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                self._set_reachable(False, exc)
                await self._close_producer(self._request_timeout_s)
                await asyncio.sleep(RESTART_BACKOFF_S)
                continue
            break
        self._restart_reason = None
        log.info("%s: a new Kafka producer has started; %d records to send", self.name, self.buffered)

    async def _expire_forever(self) -> None:
        """Fail records whose publish deadline has passed, wherever they wait."""
        interval_s = min(1.0, self.publish_timeout_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            expired = [record for record in self._inflight if record.deadline <= now]
            for record in expired:
                del self._inflight[record]
            if self._sending is not None and self._sending.deadline <= now and not self._sending.resolved:
                # It stays in `_sending` until producer.send returns, then counts as resolved.
                expired.append(self._sending)
            if any(record.deadline <= now for record in self._queue):
                expired.extend(record for record in self._queue if record.deadline <= now)
                self._queue = deque(record for record in self._queue if record.deadline > now)

            for record in expired:
                self._resolve_failed(record, TIMEOUT)
            self._log_failures()

    async def _check_broker_forever(self) -> None:
        """Send a metadata request every health check interval, so readiness follows the broker when idle."""
        while True:
            await asyncio.sleep(self._health_check_interval_s)
            producer = self._producer
            if producer is None:
                continue  # being replaced
            try:
                async with asyncio.timeout(self._request_timeout_s):
                    await producer.client.fetch_all_metadata()
            except (KafkaError, OSError, TimeoutError) as exc:
                self._set_reachable(False, exc)
            else:
                self._set_reachable(True)

    def _set_reachable(self, reachable: bool, error: BaseException | None = None) -> None:
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            log.info("%s: Kafka at %s is reachable again; %d records buffered", self.name, self._servers, self.buffered)
        else:
            reason = "no broker responded" if isinstance(error, KafkaError | OSError | TimeoutError) else error
            log.warning(
                "%s: Kafka at %s is unreachable (%s); buffering up to %d records, each for up to %.0f s",
                self.name, self._servers, reason, self.capacity, self.publish_timeout_s,
            )

    def _resolve(self, record: OutgoingRecord) -> None:
        record.resolved = True
        self._after_removal()

    def _after_removal(self) -> None:
        if self.buffered == 0:
            self._drained.set()
        self._space.set()
        self._update_gauges()

    def _resolve_failed(self, record: OutgoingRecord, reason: str, error: Any = None) -> None:
        if record.resolved:
            return
        self._resolve(record)
        if self._metrics is not None:
            outcome = "overflow" if reason == OVERFLOW else "failure"
            self._metrics.published.labels(self.name, outcome).inc()
        if reason != SHUTDOWN:  # stop() reports those itself
            self._failures[reason] += 1
        if error is not None:
            self._last_error = str(error) or type(error).__name__
        self._on_failed(record, reason)

    def _log_failures(self, force: bool = False) -> None:
        """Log the records failed since the last summary, at most once per FAILURE_LOG_INTERVAL_S unless `force`."""
        now = time.monotonic()
        if not self._failures or (not force and now - self._failures_logged_at < FAILURE_LOG_INTERVAL_S):
            return
        counts = ", ".join(f"{count} {reason}" for reason, count in sorted(self._failures.items()))
        detail = f"; last error: {self._last_error}" if self._last_error else ""
        log.error("%s: records not delivered since the last report: %s%s", self.name, counts, detail)
        self._failures.clear()
        self._last_error = ""
        self._failures_logged_at = now

    def _update_gauges(self) -> None:
        if self._metrics is None:
            return
        buffered = self.buffered
        self._metrics.buffered_results.labels(self.name).set(buffered)
        self._metrics.buffer_fill_ratio.labels(self.name).set(min(1.0, buffered / self.capacity))

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=task.exception())
            self._running = False
