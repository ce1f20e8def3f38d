"""The local Kafka broker of scripts/kafka.sh, for tests: control, unique topics, reading topics back.

Tests reach the broker at $VISTREAM_KAFKA_BOOTSTRAP (scripts/test.sh exports it), by default
127.0.0.1:19092. `kafka_broker` starts it when it is not running; `broker_outage` stops and
starts it, and always leaves it running. When a test that uses either fails, the end of the
broker log is printed.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka.sh"
BOOTSTRAP = os.environ.get("VISTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
# Starting includes fetching the jars with Maven the first time on a new machine.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60
LOG_TAIL_LINES = 60


class BrokerError(RuntimeError):
    """kafka.sh failed; the message contains its output."""


def kafka_script(command: str, timeout_s: float) -> str:
    """Run `scripts/kafka.sh COMMAND`; return its output, raise BrokerError if it fails."""
    completed = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    output = (completed.stdout + completed.stderr).strip()
    if completed.returncode != 0:
        raise BrokerError(f"scripts/kafka.sh {command} exited with {completed.returncode}: {output}")
    return output


def broker_log_path() -> Path:
    return Path(kafka_script("logs", 30))


def broker_log_tail(lines: int = LOG_TAIL_LINES) -> str:
    path = broker_log_path()
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"cannot read the broker log {path}: {exc}"
    return "\n".join([f"--- last {len(tail)} lines of {path} ---", *tail])


class Broker:
    """The local broker; `stop` and `start` block, so call them through asyncio.to_thread in async tests."""

    bootstrap = BOOTSTRAP

    def is_running(self) -> bool:
        try:
            kafka_script("status", 30)
        except BrokerError:
            return False
        return True

    def start(self) -> None:
        kafka_script("start", START_TIMEOUT_S)

    def stop(self) -> None:
        kafka_script("stop", STOP_TIMEOUT_S)


def _report_on_failure(request: pytest.FixtureRequest, failed_before: int) -> None:
    if request.session.testsfailed <= failed_before:
        return
    text = f"Kafka broker log for {request.node.nodeid}:\n{broker_log_tail()}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(text)


@pytest.fixture(scope="session")
def running_broker() -> Broker:
    broker = Broker()
    if not broker.is_running():
        try:
            broker.start()
        except BrokerError as exc:
            pytest.fail(f"the local Kafka broker does not start: {exc}\n{broker_log_tail()}")
    return broker


@pytest.fixture
def kafka_broker(running_broker: Broker, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The running local broker; prints the end of its log when the test fails."""
    failed_before = request.session.testsfailed
    yield running_broker
    _report_on_failure(request, failed_before)


@pytest.fixture
def broker_outage(running_broker: Broker, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The local broker, for tests that stop it; it runs again after the test, pass or fail."""
    failed_before = request.session.testsfailed
    try:
        yield running_broker
    finally:
        if not running_broker.is_running():
            running_broker.start()
        _report_on_failure(request, failed_before)


def unique_topic(prefix: str) -> str:
    """A topic name no other test uses, so tests never see each other's messages."""
    return f"test.{prefix}.{uuid.uuid4().hex[:12]}"


async def read_topic(
    topic: str, expected: int, timeout_s: float = 30.0, extra_wait_s: float = 1.0
) -> list[ConsumerRecord]:
    """Read a topic from its beginning, without a group, until `expected` records or `timeout_s`.

    After `expected` records it reads for `extra_wait_s` more, so that extra copies show up.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            records.extend(record for batch in batches.values() for record in batch)
        batches = await consumer.getmany(timeout_ms=int(extra_wait_s * 1000))
        records.extend(record for batch in batches.values() for record in batch)
        return records
    finally:
        await consumer.stop()


async def create_topic(topic: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
    """Create a topic with its own settings, e.g. {"max.message.bytes": "200"}."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config or {})])
    finally:
        await admin.close()


async def committed_offset(group_id: str, topic: str, partition: int = 0) -> int | None:
    """Return the group's committed offset of a partition, or None when it has none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()


def header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers:
        if key == name:
            return value.decode("utf-8")
    return None


def count_copies(keys: list) -> tuple[set, int]:
    """Return the distinct keys and how many keys are extra copies."""
    counts = Counter(keys)
    return set(counts), sum(count - 1 for count in counts.values())
