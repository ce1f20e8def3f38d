"""Run a real App in-process and talk to its HTTP endpoints, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from stream.app import App
from stream.config import Config, validate_config


@dataclass
class HttpReply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def app_config(cameras: list[dict[str, Any]], **sections: Any) -> Config:
    """A Config with these cameras, any free HTTP port and the given sections."""
    sections.setdefault("http", {"port": 0})
    return validate_config({"cameras": cameras, **sections}, "test")


def http_get(port: int, path: str, accept: str | None = None, timeout_s: float = 5.0) -> HttpReply:
    """GET http://127.0.0.1:PORT/PATH; blocking, so call it from a thread when a loop is running."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return HttpReply(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return HttpReply(error.code, error.headers.get("Content-Type", ""), error.read())


async def wait_for_status(port: int, path: str, status: int, timeout_s: float = 20.0) -> HttpReply:
    """Poll PATH until it returns `status`; raise AssertionError with the last reply after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await asyncio.to_thread(http_get, port, path)
        if reply.status == status:
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still returns {reply.status} {reply.body!r} after {timeout_s} s")
        await asyncio.sleep(0.05)


async def wait_until(condition: Callable[[], bool], timeout_s: float, description: str, interval_s: float = 0.05) -> float:
    """Poll `condition` until it is true; return the seconds waited, or fail naming `description`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{description} did not happen within {timeout_s} s")
        await asyncio.sleep(interval_s)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running_app(config: Config, prepare: Callable[[App], None] | None = None) -> AsyncIterator[App]:
    """Run an App until the block ends, then stop it and wait for `run` to return.

    `prepare` may swap parts of the App (its sink, for example) before it starts. The block is
    entered once the HTTP port is bound.
    """
    app = App(config, registry=CollectorRegistry(), stdout=_Discard())
    if prepare is not None:
        prepare(app)
    task = asyncio.create_task(app.run(), name="app-under-test")
    while app.http_port is None:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield app
    finally:
        app.request_stop()
        async with asyncio.timeout(config.shutdown_timeout_s + 10):
            await task


class _Discard:
    """A binary stream that drops what is written, standing in for standard output."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass
