"""The credential scrubber and the backoff that live cameras use."""

import logging
import random

import pytest

from stream.redact import RedactingFilter, redact, register_secret
from stream.sources.backoff import Backoff, Reminder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.7:554/s1", "rtsp://***@10.0.0.7:554/s1"),
        ("open rtsp://admin@cam/s1 failed", "open rtsp://***@cam/s1 failed"),
        ("two: rtsp://a:b@h1/x and http://c:d@h2/y", "two: rtsp://***@h1/x and http://***@h2/y"),
        ("rtsp://10.0.0.7/s1 has no credentials", "rtsp://10.0.0.7/s1 has no credentials"),
        ("mail me at ops@example.org", "mail me at ops@example.org"),
    ],
)
def test_redact_removes_url_userinfo(text, expected):
    assert redact(text) == expected


def test_redact_removes_registered_secret_anywhere():
    register_secret("Sup3r-Secret-Value")

    assert redact("ffmpeg said: bad auth Sup3r-Secret-Value!") == "ffmpeg said: bad auth ***!"


def test_redacting_filter_scrubs_formatted_records():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "opening %s", ("rtsp://u:pw@h/s",), None)

    RedactingFilter().filter(record)

    assert record.getMessage() == "opening rtsp://***@h/s"


def test_backoff_doubles_with_jitter_up_to_cap():
    backoff = Backoff(initial_s=0.5, max_s=4.0, rng=random.Random(7))

    delays = [backoff.next_delay_s() for _ in range(8)]

    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, ceiling in zip(delays, ceilings):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay_s() <= 0.5


def test_reminder_lets_one_message_through_per_interval():
    now = [0.0]
    reminder = Reminder(60.0, clock=lambda: now[0])

    seen = []
    for second in range(0, 200, 5):
        now[0] = float(second)
        seen.append(reminder.due())

    assert seen.count(True) == 4  # at 0, 60, 120 and 180 s
