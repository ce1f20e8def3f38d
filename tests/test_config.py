"""Config validation: unknown keys, derived camera ids, secrets and overrides."""

import pytest

from stream.config import derive_camera_id, load_config, validate_config
from stream.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "camera_id"),
    [
        ("/data/videos/gate 1.mp4", "gate-1"),
        ("bikes.mp4", "bikes"),
        ("rtsp://10.0.0.7:554/stream1?channel=2", "stream1"),
        ("0", "device0"),
    ],
)
def test_camera_id_derived_from_url(url, camera_id):
    assert derive_camera_id(url) == camera_id


def test_duplicate_camera_ids_rejected():
    with pytest.raises(ConfigError, match="camera id 'a' is used twice"):
        validate_config({"cameras": [{"id": "a", "url": "x.mp4"}, {"id": "a", "url": "y.mp4"}]}, "test")


def test_two_password_sources_rejected():
    with pytest.raises(ConfigError, match="give only one of password, password_env and password_file"):
        validate_config({"cameras": [{"url": "rtsp://h/s", "password": "p", "password_env": "CAM_PW"}]}, "test")


def test_password_hidden_in_repr():
    config = validate_config({"cameras": [{"url": "rtsp://h/s", "username": "u", "password": "hunter2"}]}, "test")

    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config.cameras[0])


def test_overrides_replace_file_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  top_k: 3\n  workers: 2\n")

    config = load_config(path, {"model.top_k": 1})

    assert config.model.top_k == 1
    assert config.model.workers == 2


def test_empty_config_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")

    config = load_config(path)

    assert config.batching.max_batch_size == 8
    assert config.cameras == []


def test_non_mapping_config_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")

    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(path)
