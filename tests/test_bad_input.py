"""Bad input ends the run with one line naming the problem and the fix, and no traceback."""

import shutil

import pytest

from tests.models import write_card


def assert_one_line_error(run, *fragments):
    assert run.returncode != 0
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("vistream: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in run.stderr


def test_missing_source(run_cli, tmp_path):
    run = run_cli("run", "--source", str(tmp_path / "absent.mp4"))

    assert_one_line_error(run, "absent.mp4", "not found", "--source")


def test_source_that_is_a_directory(run_cli, tmp_path):
    run = run_cli("run", "--source", str(tmp_path))

    assert_one_line_error(run, "not a file")


def test_file_that_is_not_video(run_cli, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 100)

    run = run_cli("run", "--source", str(text))

    assert_one_line_error(run, "notes.mp4", "not a video", "MP4")


def test_truncated_video(run_cli, tmp_path, sample_video):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(sample_video.read_bytes()[:4096])

    run = run_cli("run", "--source", str(cut))

    assert_one_line_error(run, "cut.mp4", "not a video")


def test_model_that_is_not_onnx(run_cli, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x00\x01 definitely not protobuf" * 50)
    write_card(tmp_path / "model.card.yaml")

    run = run_cli("run", "--model", str(fake), "--max-frames", "1")

    assert_one_line_error(run, "model.onnx", "not a valid ONNX model", "--model")


def test_model_card_with_wrong_input_size(run_cli, tmp_path, builtin_model):
    model = shutil.copyfile(builtin_model, tmp_path / "model.onnx")
    write_card(tmp_path / "model.card.yaml", input_size=[320, 320])

    run = run_cli("run", "--model", str(model), "--max-frames", "1")

    assert_one_line_error(run, "input_size [320, 320]", "height 224", "set input_size")


def test_model_card_with_wrong_layout(run_cli, tmp_path, builtin_model):
    model = shutil.copyfile(builtin_model, tmp_path / "model.onnx")
    write_card(tmp_path / "model.card.yaml", layout="NHWC")

    run = run_cli("run", "--model", str(model), "--max-frames", "1")

    assert_one_line_error(run, "layout NHWC", "set layout")


def test_model_card_with_wrong_label_count(run_cli, tmp_path, builtin_model):
    model = shutil.copyfile(builtin_model, tmp_path / "model.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    write_card(tmp_path / "model.card.yaml", labels=str(labels))

    run = run_cli("run", "--model", str(model), "--max-frames", "1")

    assert_one_line_error(run, "labels.txt", "2 names", "1000 classes")


def test_model_without_card(run_cli, tmp_path, builtin_model):
    model = shutil.copyfile(builtin_model, tmp_path / "model.onnx")

    run = run_cli("run", "--model", str(model), "--max-frames", "1")

    assert_one_line_error(run, "model.card.yaml", "not found", "--model-card")


def test_unknown_config_key(run_cli, tmp_path):
    config = tmp_path / "vistream.yaml"
    config.write_text("batching:\n  max_batch: 4\n")

    run = run_cli("run", "--config", str(config))

    assert_one_line_error(run, "unknown key 'batching.max_batch'", "spelling")
    assert run.returncode == 2


def test_invalid_config_value(run_cli, tmp_path):
    config = tmp_path / "vistream.yaml"
    config.write_text("cameras:\n  - url: a.mp4\n    fps: -3\n")

    run = run_cli("run", "--config", str(config))

    assert_one_line_error(run, "cameras.0.fps", "greater than 0", "-3")


def test_missing_config_file(run_cli, tmp_path):
    run = run_cli("run", "--config", str(tmp_path / "absent.yaml"))

    assert_one_line_error(run, "absent.yaml", "not found", "--config")


def test_debug_shows_traceback(run_cli, tmp_path):
    run = run_cli("--debug", "run", "--source", str(tmp_path / "absent.mp4"))

    assert run.returncode != 0
    assert "Traceback" in run.stderr
    assert "vistream: error: " in run.stderr


def test_config_file_with_broken_yaml(run_cli, tmp_path):
    config = tmp_path / "vistream.yaml"
    config.write_text("cameras:\n  - url: a.mp4\n   fps: [\n")

    run = run_cli("run", "--config", str(config))

    assert_one_line_error(run, "vistream.yaml", "not valid YAML", "line 3")


def test_source_with_unsupported_scheme(run_cli):
    run = run_cli("run", "--source", "http://127.0.0.1:1/clip.mp4")

    assert_one_line_error(run, "http://127.0.0.1:1/clip.mp4", "unsupported scheme http://", "rtsp://")
    assert run.returncode == 2


def test_debug_accepted_after_run(run_cli, tmp_path):
    run = run_cli("run", "--debug", "--source", str(tmp_path / "absent.mp4"))

    assert run.returncode == 1
    assert "Traceback" in run.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--top-k", "0", "argument --top-k: must be at least 1, got 0"),
        ("--fps", "-2", "argument --fps: must be greater than 0, got -2"),
        ("--max-frames", "ten", "argument --max-frames: expected a whole number, got 'ten'"),
        ("--http-port", "70000", "argument --http-port: must be from 0 to 65535, got 70000"),
    ],
)
def test_invalid_option_names_the_option(run_cli, option, value, message):
    run = run_cli("run", option, value)

    assert run.returncode == 2
    assert run.stdout == ""
    assert message in run.stderr
    assert "Traceback" not in run.stderr
