"""The exception root of vistream.

Every error meant for a user derives from `VistreamError`. Its message names the bad value and
what to change; the CLI prints it on one line. Retry code reads `retriable` instead of matching
on types.
"""

from __future__ import annotations


class VistreamError(Exception):
    """A failure with a message fit for the user."""

    retriable = False


class ConfigError(VistreamError):
    """Invalid or inconsistent settings."""


class SourceError(VistreamError):
    """A camera or video source that cannot be opened or read."""


class SourceUnavailable(SourceError):
    """A source that may come back: a camera offline, a stream that stalled."""

    retriable = True


class ModelError(VistreamError):
    """A model file, model card or labels file that cannot be used."""


class SinkError(VistreamError):
    """A result sink that cannot accept results."""
