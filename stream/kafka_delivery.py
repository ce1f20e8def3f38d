"""Delivery reports from sinks to kafka:// cameras, which commit a frame's offset only after them."""

from __future__ import annotations

from typing import Any, Protocol


class DeliveryListener(Protocol):
    """Told the outcome of each result that carries a Kafka `source` (topic, partition, offset)."""

    def result_delivered(self, origin: dict[str, Any]) -> None: ...

    def result_failed(self, origin: dict[str, Any], reason: str) -> None: ...


class ReportingSink:
    """Wraps a sink without delivery reports: a result counts as delivered once `publish` returns.

    That holds for the JSON Lines sink, which writes and flushes a batch before it returns.
    """

    def __init__(self, sink: Any):
        self.inner = sink
        self.name = sink.name
        self._listeners: list[DeliveryListener] = []

    @property
    def ready(self) -> bool:
        return self.inner.ready

    def add_delivery_listener(self, listener: DeliveryListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        await self.inner.start()

    async def publish(self, results: list[dict[str, Any]]) -> None:
        await self.inner.publish(results)
        for result in results:
            origin = result.get("source")
            if origin is not None:
                for listener in self._listeners:
                    listener.result_delivered(origin)

    async def stop(self) -> None:
        await self.inner.stop()
