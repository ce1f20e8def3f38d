"""Result schema v1: one JSON object per analysed frame.

The JSON Schema lives in `stream/schemas/result-v1.schema.json`; tests validate every result
against it. Field names only ever get added within v1; a rename or removal makes v2.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from detectors.postprocess import Prediction
from stream.frames import Frame

SCHEMA_ID = "vistream.result.v1"
SCHEMA_PATH = Path(__file__).with_name("schemas") / "result-v1.schema.json"


def utc_iso(timestamp: float) -> str:
    """Format seconds since the epoch as RFC 3339 UTC with microseconds, e.g. 2026-01-02T03:04:05.123456Z."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_result(
    frame: Frame,
    predictions: list[Prediction],
    model_name: str,
    model_version: str,
    queue_s: float,
    preprocess_s: float,
    inference_s: float,
    published_at: float,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "camera_id": frame.camera_id,
        "sequence": frame.sequence,
        "captured_at": utc_iso(frame.captured_at),
        "published_at": utc_iso(published_at),
        "model": {"name": model_name, "version": model_version},
        "labels": [{"class_id": p.class_id, "label": p.label, "score": round(p.score, 6)} for p in predictions],
        "latency_ms": {
            "decode": round(frame.decode_s * 1000.0, 3),
            "queue": round(queue_s * 1000.0, 3),
            "preprocess": round(preprocess_s * 1000.0, 3),
            "inference": round(inference_s * 1000.0, 3),
        },
    }
    if frame.pts_ms is not None:
        result["pts_ms"] = round(frame.pts_ms, 3)
    if frame.origin:
        result["source"] = frame.origin
    return result


def encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
