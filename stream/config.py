"""Typed settings. Unknown keys are rejected, every field is described, and units are in names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from stream.errors import ConfigError

CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraConfig(_Settings):
    """One configured source of frames."""

    id: str | None = Field(
        None,
        pattern=CAMERA_ID_PATTERN,
        description="Camera id used in results, logs and metric labels; defaults to one derived from the url.",
    )
    url: str = Field(description="rtsp:// URL, path of a video file, or a capture device index such as 0.")
    fps: float | None = Field(
        None, gt=0, description="Maximum frames analysed per second of video time; unset analyses every frame."
    )
    max_frames: int | None = Field(None, gt=0, description="Stop this camera after analysing this many frames.")
    loop: bool = Field(False, description="Restart a video file from its beginning at its end.")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    username: str | None = Field(None, description="RTSP user name; kept out of the url so it is never printed.")
    password: SecretStr | None = Field(None, description="RTSP password; prefer password_env or password_file.")
    password_env: str | None = Field(None, description="Name of an environment variable holding the RTSP password.")
    password_file: Path | None = Field(None, description="File whose first line is the RTSP password.")
    open_timeout_s: float = Field(10.0, gt=0, description="Deadline for opening the stream, in seconds.")
    read_timeout_s: float = Field(5.0, gt=0, description="Deadline for reading one frame, in seconds.")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First reconnect delay after a failure, in seconds.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap on the exponential reconnect delay, in seconds.")

    @model_validator(mode="after")
    def _one_password_source(self) -> "CameraConfig":
        given = [n for n in ("password", "password_env", "password_file") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of password, password_env and password_file (got {', '.join(given)})")
        return self

    @property
    def camera_id(self) -> str:
        return self.id or derive_camera_id(self.url)


class ModelConfig(_Settings):
    """The classifier and how it runs."""

    path: Path | None = Field(None, description="ONNX classifier; unset uses the built-in EfficientNet-Lite0.")
    card: Path | None = Field(None, description="Model card; defaults to the model path with suffix .card.yaml.")
    top_k: int = Field(5, ge=1, le=1000, description="Number of best labels reported per frame.")
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="Execution provider; auto picks TensorRT or CUDA when available, else CPU."
    )
    workers: int = Field(1, ge=1, le=64, description="Inference worker threads.")
    intra_op_threads: int | None = Field(
        None, ge=1, description="onnxruntime threads per session; unset divides the usable CPUs among workers."
    )
    session_per_worker: bool = Field(False, description="Give each worker its own session instead of sharing one.")


class BatchingConfig(_Settings):
    """How frames from all cameras are grouped for the model."""

    max_batch_size: int = Field(8, ge=1, le=1024, description="A batch is sent once it holds this many frames.")
    max_wait_ms: float = Field(
        10.0, ge=0, description="A batch is sent once its oldest frame has waited this long, in milliseconds."
    )
    queue_frames: int = Field(
        16, ge=1, description="Frames buffered per file or Kafka camera before its reader waits (no drops)."
    )


class OutputConfig(_Settings):
    """Where results go when no Kafka sink is configured."""

    path: Path | None = Field(None, description="JSON Lines file for results; unset writes to standard output.")


class Config(_Settings):
    """All settings of one vistream process."""

    cameras: list[CameraConfig] = Field(default_factory=list, description="Sources of frames.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The classifier.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Batching across cameras.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Result output.")
    shutdown_timeout_s: float = Field(10.0, gt=0, description="Deadline for a graceful stop, in seconds.")

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for camera in cameras:
            if camera.camera_id in seen:
                raise ValueError(f"camera id {camera.camera_id!r} is used twice; give each camera a unique id")
            seen.add(camera.camera_id)
        return cameras


def derive_camera_id(url: str) -> str:
    """Derive a camera id from a url: the file or path stem, with unsafe characters replaced."""
    if url.isdigit():
        return f"device{url}"
    tail = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    stem = tail.rsplit(".", 1)[0] if "." in tail else tail
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).strip("-.") or "camera"
    return cleaned[:64]


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config file (or none), apply command-line overrides and validate the result."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return validate_config(data, str(path) if path else "command line")


def validate_config(data: dict[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config ({origin}): {describe_errors(exc)}") from None


def describe_errors(exc: ValidationError) -> str:
    """Render pydantic errors as `location: problem` phrases that name the key to change."""
    phrases = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "config"
        if error["type"] == "extra_forbidden":
            phrases.append(f"unknown key {location!r}; remove it or check its spelling")
        else:
            phrases.append(f"{location}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(phrases)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the --config path") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping at the top level")
    return raw


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
