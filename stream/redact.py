"""The one credential scrubber: logs, metric labels, error messages, reprs and results use it.

`redact` removes the user-info part of every URL in a text (`rtsp://user:secret@host` becomes
`rtsp://***@host`) and replaces every registered secret value, wherever it appears. Camera
passwords are registered when the config is loaded, so a password that leaks into an FFmpeg
message or an exception text is scrubbed too.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Make `redact` replace `value` in every text it scrubs from now on."""
    if value:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return `text` with URL user-info and every registered secret replaced by ***."""
    scrubbed = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        scrubbed = scrubbed.replace(secret, MASK)
    return scrubbed


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message through `redact`.

    Installed on the root handlers by the CLI, so every logger's output is scrubbed, including
    third-party libraries that format a URL into their messages.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg = clean
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach RedactingFilter to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
