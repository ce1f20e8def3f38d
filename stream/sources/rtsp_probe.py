"""A cheap RTSP liveness probe, run on the event loop before OpenCV opens a stream.

OpenCV's FFmpeg backend holds one process-wide lock while it opens any capture (seen with
opencv-python-headless 5.1: a second camera's open waited for a first, unreachable camera's
5 s open timeout). An unreachable camera handed to OpenCV would therefore delay the first frames
of every other camera. The probe keeps dead cameras away from that lock: only a server that
responds to an RTSP OPTIONS request is opened with OpenCV.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

from stream.errors import SourceUnavailable

DEFAULT_RTSP_PORT = 554


def _request_uri(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]  # the request line never carries credentials
    return urlunsplit((parts.scheme, host, parts.path or "/", parts.query, ""))


async def probe_rtsp(url: str, timeout_s: float) -> None:
    """Raise SourceUnavailable unless the server at `url` responds to RTSP OPTIONS within `timeout_s`.

    The response status is not checked: a 401 or 404 still proves a live RTSP server, and
    OpenCV reports those errors itself when it opens the stream.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_RTSP_PORT
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            request = f"OPTIONS {_request_uri(url)} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: vistream\r\n\r\n"
            writer.write(request.encode("ascii", "replace"))
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        raise SourceUnavailable(f"no RTSP response from {host}:{port} within {timeout_s:.1f} s") from None
    except OSError as exc:
        raise SourceUnavailable(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    finally:
        if writer is not None:
            writer.close()
    if not status_line.startswith(b"RTSP/"):
        raise SourceUnavailable(f"{host}:{port} did not respond as an RTSP server; check the camera url")
