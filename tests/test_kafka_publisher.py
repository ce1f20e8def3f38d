"""KafkaPublisher's buffer, overflow policies, deadlines and producer replacement, with a fake producer.

The fake replaces aiokafka's producer where a real broker cannot be made to misbehave on
cue: futures that never resolve, a producer that fails with OutOfOrderSequenceNumber, a stop
that hangs. The behaviour against the real broker is in test_kafka_results.py.
"""

import asyncio
import time

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, OutOfOrderSequenceNumber
from prometheus_client import CollectorRegistry

from stream.errors import SinkError
from stream.kafka_publisher import OVERFLOW, REJECTED, SHUTDOWN, TIMEOUT, KafkaPublisher, OutgoingRecord
from stream.metrics import Metrics


class FakeClient:
    def __init__(self):
        self.reachable = True

    async def fetch_all_metadata(self):
        if not self.reachable:
            raise KafkaConnectionError("no broker")


class FakeProducer:
    """Hands out one future per record; the test resolves them. `hold` makes send wait."""

    def __init__(self, fail_start: bool = False):
        self.client = FakeClient()
        self.sent: list[tuple[bytes, asyncio.Future]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.send_entered = asyncio.Event()
        self.fail_start = fail_start
        self.hang_on_stop = False
        self.stopped = False

    async def start(self):
        if self.fail_start:
            raise KafkaConnectionError("Unable to bootstrap")

    async def send(self, topic, value, key=None, headers=None):
        self.send_entered.set()
        await self.hold.wait()
        future = asyncio.get_running_loop().create_future()
        self.sent.append((value, future))
        return future

    async def stop(self):
        self.stopped = True
        if self.hang_on_stop:
            await asyncio.Event().wait()


class Harness:
    def __init__(self, producers: list[FakeProducer], **options):
        self.producers = producers
        self.created = 0
        self.delivered: list[bytes] = []
        self.failed: list[tuple[bytes, str]] = []
        self.metrics = Metrics(CollectorRegistry())
        settings = {
            "capacity": 100,
            "overflow": "block",
            "publish_timeout_s": 30.0,
            "health_check_interval_s": 0.05,
            "request_timeout_s": 1.0,
            **options,
        }
        self.publisher = KafkaPublisher(
            "kafka",
            self._next_producer,
            on_delivered=lambda record: self.delivered.append(record.value),
            on_failed=lambda record, reason: self.failed.append((record.value, reason)),
            metrics=self.metrics,
            **settings,
        )

    def _next_producer(self) -> FakeProducer:
        producer = self.producers[min(self.created, len(self.producers) - 1)]
        self.created += 1
        return producer

    def outcome(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value(
            "vistream_sink_results_total", {"sink": "kafka", "outcome": outcome}
        ) or 0.0


def records(*values: bytes) -> list[OutgoingRecord]:
    return [OutgoingRecord("results", value) for value in values]


async def settle(condition, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_drop_oldest_counts_overflow():
    producer = FakeProducer()
    producer.hold.clear()  # the first record stays inside send, the others queue behind it
    harness = Harness([producer], capacity=3, overflow="drop_oldest")
    await harness.publisher.start()

    await harness.publisher.publish(records(b"r1"))
    await asyncio.wait_for(producer.send_entered.wait(), 1.0)
    await harness.publisher.publish(records(b"r2", b"r3", b"r4", b"r5"))
    producer.hold.set()
    await settle(lambda: len(producer.sent) == 3)

    assert [value for value, _ in producer.sent] == [b"r1", b"r4", b"r5"]
    assert harness.failed == [(b"r2", OVERFLOW), (b"r3", OVERFLOW)]
    assert harness.outcome("overflow") == 2
    await harness.publisher.stop(0.5)


@pytest.mark.asyncio
async def test_block_waits_for_room():
    producer = FakeProducer()
    harness = Harness([producer], capacity=2)
    await harness.publisher.start()

    await harness.publisher.publish(records(b"r1", b"r2"))
    third = asyncio.create_task(harness.publisher.publish(records(b"r3")))
    await asyncio.sleep(0.1)
    blocked = not third.done()
    producer.sent[0][1].set_result(None)
    await asyncio.wait_for(third, 1.0)

    assert blocked
    assert harness.delivered == [b"r1"]
    assert harness.publisher.buffered == 2
    assert harness.metrics.registry.get_sample_value("vistream_sink_buffer_fill_ratio", {"sink": "kafka"}) == 1.0
    await harness.publisher.stop(0.5)


@pytest.mark.asyncio
async def test_unacknowledged_record_fails_at_deadline():
    harness = Harness([FakeProducer()], publish_timeout_s=0.2)
    await harness.publisher.start()

    await harness.publisher.publish(records(b"r1"))
    await settle(lambda: harness.failed)

    assert harness.failed == [(b"r1", TIMEOUT)]
    assert harness.outcome("failure") == 1
    assert harness.publisher.buffered == 0
    await harness.publisher.stop(0.5)


@pytest.mark.asyncio
async def test_rejected_record_fails_without_retry():
    producer = FakeProducer()
    harness = Harness([producer])
    await harness.publisher.start()

    await harness.publisher.publish(records(b"huge"))
    await settle(lambda: producer.sent)
    producer.sent[0][1].set_exception(MessageSizeTooLargeError())
    await settle(lambda: harness.failed)

    assert harness.failed == [(b"huge", REJECTED)]
    assert len(producer.sent) == 1
    await harness.publisher.stop(0.5)


@pytest.mark.asyncio
async def test_failed_producer_replaced_records_resent():
    broken, fresh = FakeProducer(), FakeProducer()
    harness = Harness([broken, fresh])
    await harness.publisher.start()

    await harness.publisher.publish(records(b"r1", b"r2", b"r3"))
    await settle(lambda: len(broken.sent) == 3)
    broken.sent[0][1].set_result(None)
    for _, future in broken.sent[1:]:
        future.set_exception(OutOfOrderSequenceNumber())
    await settle(lambda: len(fresh.sent) == 2)
    for _, future in fresh.sent:
        future.set_result(None)
    await settle(lambda: len(harness.delivered) == 3)

    assert harness.created == 2
    assert broken.stopped
    assert [value for value, _ in fresh.sent] == [b"r2", b"r3"]
    assert harness.delivered == [b"r1", b"r2", b"r3"]
    assert harness.failed == []
    await harness.publisher.stop(0.5)


@pytest.mark.asyncio
async def test_stop_bounded_without_acknowledgements():
    producer = FakeProducer()
    producer.hang_on_stop = True
    harness = Harness([producer])
    await harness.publisher.start()
    await harness.publisher.publish(records(b"r1", b"r2"))

    started = time.monotonic()
    await harness.publisher.stop(1.0)
    took_s = time.monotonic() - started

    assert took_s < 1.5
    assert harness.failed == [(b"r1", SHUTDOWN), (b"r2", SHUTDOWN)]
    assert not harness.publisher.ready


@pytest.mark.asyncio
async def test_readiness_follows_broker_checks():
    producer = FakeProducer()
    harness = Harness([producer])
    await harness.publisher.start()
    ready_at_start = harness.publisher.ready

    producer.client.reachable = False
    await settle(lambda: not harness.publisher.ready)
    producer.client.reachable = True
    await settle(lambda: harness.publisher.ready)

    assert ready_at_start
    await harness.publisher.stop(0.5)


@pytest.mark.asyncio
async def test_start_without_broker_names_setting():
    harness = Harness([FakeProducer(fail_start=True)])

    with pytest.raises(SinkError, match="check kafka.bootstrap_servers"):
        await harness.publisher.start()
