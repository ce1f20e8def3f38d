"""Start and control a real RTSP server (rtsp_server.py) from tests.

The server runs under Debian's /usr/bin/python3, which has the GStreamer bindings that
scripts/install-rtsp.sh installs. This module needs only the standard library, so it works
from the project's virtual environment.
"""

import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
HOST = "127.0.0.1"
READY_PREFIX = "READY rtsp://"


class RtspServerError(RuntimeError):
    """Raised when the RTSP server fails to start, or is in the wrong state for a request.

    start() raises it when the server is already running or fails to become ready, and then
    the message ends with the tail of the server log. pause() and resume() raise it when the
    server is not running.
    """


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when this function checked it.

    Another process may take the port before the server binds it. Passing port=0 to RtspServer
    avoids that race, because the server then reports the port that the kernel chose.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class RtspServer:
    """A real RTSP server process on 127.0.0.1 that serves video files, each looping forever.

    `mounts` maps a mount path such as "/cam1" to a video file. With port=0 the kernel picks
    the port on the first start, and later starts reuse it, so kill() then start() brings the
    server back on the same URL. The server's stderr is appended to `log_path`.

    The server exits on its own when this process dies, because it watches its stdin pipe.
    NOTE: a server that pause() froze cannot notice that, so if this process dies between
    pause() and resume(), the server stays stopped until someone sends it SIGCONT or SIGKILL.

    Methods are not thread-safe.
    """

    def __init__(
        self,
        port: int,
        mounts: Mapping[str, str | os.PathLike],
        user: str | None = None,
        password: str | None = None,
        log_path: str | os.PathLike | None = None,
        protocols: str = "tcp,udp",
        ready_timeout_s: float = 30.0,
        stop_timeout_s: float = 5.0,
    ):
        if not mounts:
            raise ValueError("mounts is empty. Give at least one mount path and its video file.")
        if (user is None) != (password is None):
            raise ValueError("user and password must be given together, or neither")

        self.port = port
        self.mounts = {path: Path(file) for path, file in mounts.items()}
        self.user = user
        self.password = password
        self.protocols = protocols
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="rtsp-server-", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "RtspServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        # The password never appears here, so the repr is safe in assertion messages.
        auth = "on" if self.user is not None else "off"
        return (
            f"RtspServer(port={self.port}, mounts={sorted(self.mounts)}, auth={auth}, "
            f"pid={self.pid})"
        )

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def url(self, mount: str, credentials: bool = True) -> str:
        """Return the RTSP URL of `mount`, with user:password@ when auth is on and requested.

        User and password are percent-encoded. FFmpeg's RTSP client decodes them again, which
        was checked with OpenCV 5.1's FFmpeg and a password containing "!".
        """
        if mount not in self.mounts:
            raise KeyError(f"unknown mount {mount!r}, known mounts are {sorted(self.mounts)}")
        userinfo = ""
        if credentials and self.user is not None:
            userinfo = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        return f"rtsp://{userinfo}{HOST}:{self.port}{mount}"

    def start(self) -> None:
        """Spawn the server and wait until it listens.

        Raises RtspServerError with the log tail if the server exits or prints no READY line
        within ready_timeout_s.
        """
        if self.running:
            raise RtspServerError(f"{self!r} is already running. Call stop() or kill() first.")

        with self.log_path.open("a") as log_file:
            log_file.write(f"--- starting RTSP server on {HOST}:{self.port} ---\n")
            log_file.flush()
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                close_fds=True,
            )

        try:
            self.port = self._wait_ready()
        except RtspServerError:
            self.kill()
            raise

    def pause(self) -> None:
        """Freeze the server with SIGSTOP.

        The kernel keeps its sockets open and still completes TCP handshakes, but the server
        sends no frames and no RTSP responses until resume().
        """
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a server that pause() froze."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server with SIGKILL and reap it. Does nothing if it is not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._close_pipes()

    def stop(self) -> None:
        """Stop the server with SIGTERM, and SIGKILL it after stop_timeout_s.

        A paused server is resumed first, because a stopped process cannot handle SIGTERM.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_pipes()

    def log_tail(self, max_lines: int = 40) -> str:
        """Return the last `max_lines` lines of the server log, for failure messages."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(log {self.log_path} not found)"
        return "\n".join(lines[-max_lines:])

    def _command(self) -> list[str]:
        command = [
            SYSTEM_PYTHON, str(SERVER_SCRIPT),
            "--port", str(self.port),
            "--protocols", self.protocols,
            "--exit-on-stdin-eof",
        ]
        for path, file in self.mounts.items():
            command += ["--mount", f"{path}={file}"]
        if self.user is not None:
            # NOTE: command-line arguments are visible to local users through ps. That is
            # acceptable for a throwaway test password on 127.0.0.1.
            command += ["--user", self.user, "--password", self.password]
        return command

    def _wait_ready(self) -> int:
        """Read the READY line from the server's stdout and return the port it reports."""
        deadline = time.monotonic() + self.ready_timeout_s
        output = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while b"\n" not in output:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise self._start_error(
                        f"printed no READY line within {self.ready_timeout_s:g} s"
                    )
                if not selector.select(timeout=remaining_s):
                    continue
                chunk = os.read(self._process.stdout.fileno(), 4096)
                if not chunk:
                    code = self._process.wait()
                    raise self._start_error(f"exited with code {code} before it was ready")
                output += chunk

        line = output.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith(READY_PREFIX):
            expected = f"{READY_PREFIX}{HOST}:PORT"
            raise self._start_error(f"printed {line!r} where {expected!r} was expected")
        return int(line.rsplit(":", 1)[1])

    def _start_error(self, reason: str) -> RtspServerError:
        return RtspServerError(
            f"RTSP server on {HOST}:{self.port} {reason}. "
            f"Last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _signal(self, signum: int) -> None:
        if not self.running:
            name = signal.Signals(signum).name
            raise RtspServerError(f"cannot send {name}: {self!r} is not running")
        self._process.send_signal(signum)

    def _close_pipes(self) -> None:
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
