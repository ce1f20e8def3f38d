"""Results as JSON Lines on standard output or in a file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO, Any

from stream.errors import SinkError
from stream.metrics import Metrics
from stream.results import encode


class JsonLinesSink:
    """Writes one JSON object per line; a batch is written and flushed in one worker-thread call."""

    def __init__(self, path: Path | None, metrics: Metrics, stream: IO[bytes] | None = None):
        self.path = path
        self.name = "jsonl" if path else "stdout"
        self.metrics = metrics
        self._stream = stream
        self._owned: IO[bytes] | None = None

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        if self.path is None:
            self._stream = self._stream or sys.stdout.buffer
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._owned = open(self.path, "ab")
        except OSError as exc:
            raise SinkError(f"cannot open output file {self.path}: {exc.strerror}; choose a writable --output path") from None
        self._stream = self._owned

    async def publish(self, results: list[dict[str, Any]]) -> None:
        payload = b"".join(encode(result) + b"\n" for result in results)
        await asyncio.to_thread(self._write, payload)
        self.metrics.published.labels(self.name, "success").inc(len(results))

    def _write(self, payload: bytes) -> None:
        if self._stream is None:
            raise RuntimeError("JsonLinesSink.start() must run before publish()")
        self._stream.write(payload)
        self._stream.flush()

    async def stop(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None
