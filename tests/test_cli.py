"""`vistream run` as a user runs it: results on stdout, logs on stderr, options and config file."""

import json
from datetime import datetime

import pytest

from stream.results import SCHEMA_ID


def test_run_default_emits_valid_results(run_cli, result_validator):
    run = run_cli("run", "--max-frames", "12")

    assert run.returncode == 0, run.stderr
    results = run.results
    assert len(results) == 12
    for result in results:
        result_validator.validate(result)
    assert {r["camera_id"] for r in results} == {"bikes"}
    assert [r["sequence"] for r in results] == list(range(1, 13))
    assert all(r["schema"] == SCHEMA_ID for r in results)
    assert all(r["model"]["name"] == "efficientnet-lite0" for r in results)
    assert all(len(r["labels"]) == 5 for r in results)
    assert "INFO" in run.stderr


def test_run_whole_clip_gives_street_labels(run_cli):
    run = run_cli("run")

    assert run.returncode == 0, run.stderr
    results = run.results
    assert len(results) == 250
    street = {"streetcar", "cab", "minivan", "limousine", "mountain bike", "jinrikisha", "parking meter",
              "bicycle-built-for-two", "tricycle", "moped", "police van", "trolleybus", "passenger car",
              "crash helmet", "racer", "car mirror", "traffic light", "street sign"}
    top_labels = [r["labels"][0]["label"] for r in results]
    street_share = sum(label in street for label in top_labels) / len(top_labels)
    assert street_share > 0.4, sorted(set(top_labels))


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_run_reports_stream_timestamps(run_cli):
    run = run_cli("run", "--max-frames", "3")

    assert [r["pts_ms"] for r in run.results] == [pytest.approx(t, abs=1e-3) for t in (0.0, 40.0, 80.0)]
    for result in run.results:
        assert parse_utc(result["captured_at"]) <= parse_utc(result["published_at"])


def test_run_fps_samples_video_time(run_cli):
    run = run_cli("run", "--fps", "5")

    assert run.returncode == 0, run.stderr
    sequences = [r["sequence"] for r in run.results]
    assert len(sequences) == 50  # 10 s of video at 5 frames per second
    assert {b - a for a, b in zip(sequences, sequences[1:])} == {5}


def test_run_loop_continues_past_end(run_cli):
    run = run_cli("run", "--loop", "--max-frames", "260", "--fps", "100")

    assert run.returncode == 0, run.stderr
    sequences = [r["sequence"] for r in run.results]
    assert len(sequences) == 260
    assert sequences == sorted(set(sequences))
    assert sequences[-1] == 260


def test_run_top_k_and_output_file(run_cli, tmp_path):
    output = tmp_path / "out" / "results.jsonl"
    run = run_cli("run", "--max-frames", "4", "--top-k", "2", "--output", str(output))

    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(results) == 4
    assert all(len(r["labels"]) == 2 for r in results)
    scores = results[0]["labels"]
    assert scores[0]["score"] >= scores[1]["score"]


def test_config_file_is_used_and_options_override_it(run_cli, tmp_path, sample_video):
    config = tmp_path / "vistream.yaml"
    config.write_text(
        f"cameras:\n  - id: gate-1\n    url: {sample_video}\n    max_frames: 6\n"
        "model:\n  top_k: 3\nbatching:\n  max_batch_size: 4\n"
    )

    from_file = run_cli("run", "--config", str(config))
    overridden = run_cli("run", "--config", str(config), "--top-k", "1", "--max-frames", "2")

    assert from_file.returncode == 0, from_file.stderr
    assert [r["camera_id"] for r in from_file.results] == ["gate-1"] * 6
    assert all(len(r["labels"]) == 3 for r in from_file.results)
    assert overridden.returncode == 0, overridden.stderr
    assert len(overridden.results) == 2
    assert all(len(r["labels"]) == 1 for r in overridden.results)
