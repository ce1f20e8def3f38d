"""Typed settings. Unknown keys are rejected, every field is described, and units are in names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from stream.errors import ConfigError
from stream.redact import redact

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
    url: str = Field(
        min_length=1,
        description="rtsp:// URL, path of a video file, capture device index such as 0, "
        "or kafka://TOPIC for a frames topic."
    )
    fps: float | None = Field(
        None, gt=0, description="Maximum frames analysed per second of video time; unset analyses every frame."
    )
    max_frames: int | None = Field(None, gt=0, description="Stop this camera after analysing this many frames.")
    loop: bool = Field(False, description="Restart a video file from its beginning at its end.")
    transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP transport; every RTSP camera of one process must use the same one."
    )
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

    def __repr_args__(self):
        # A url may carry user:password@; reprs, str() and error messages show it redacted.
        for name, value in super().__repr_args__():
            yield name, (redact(value) if name == "url" and isinstance(value, str) else value)


class ModelConfig(_Settings):
    """The classifier and how it runs."""

    path: Path | None = Field(None, description="ONNX classifier; unset uses the built-in EfficientNet-Lite0.")
    card: Path | None = Field(None, description="Model card; defaults to the model path with suffix .card.yaml.")
    top_k: int = Field(5, ge=1, le=1000, description="Number of best labels reported per frame.")
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="Execution provider; auto picks TensorRT or CUDA when available, else CPU."
    )
    workers: int = Field(
        2,
        ge=1,
        le=64,
        description="Inference worker threads; with two, one batch is preprocessed while another runs.",
    )
    intra_op_threads: int | None = Field(
        None, ge=1, description="onnxruntime threads per session; unset divides the usable CPUs among workers."
    )
    session_per_worker: bool = Field(False, description="Give each worker its own session instead of sharing one.")


class BatchingConfig(_Settings):
    """Batching of frames from all cameras for the model."""

    max_batch_size: int = Field(8, ge=1, le=1024, description="A batch is sent once it contains this many frames.")
    max_wait_ms: float = Field(
        10.0, ge=0, description="A batch is sent once its oldest frame has waited this long, in milliseconds."
    )
    queue_frames: int = Field(
        16, ge=1, description="Frames buffered per file or Kafka camera before its reader waits (no drops)."
    )


class OutputConfig(_Settings):
    """The result output used when no Kafka results topic is configured."""

    path: Path | None = Field(None, description="JSON Lines file for results; unset writes to standard output.")


class HttpConfig(_Settings):
    """The port that serves /metrics, /healthz and /readyz."""

    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 listens on every IPv4 interface.")
    port: int = Field(9108, ge=0, le=65535, description="TCP port to listen on; 0 picks any free port.")
    liveness_timeout_s: float = Field(
        5.0, gt=0, description="/healthz returns 503 once the event loop has been blocked this long, in seconds."
    )


KAFKA_TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"


class KafkaResultsConfig(_Settings):
    """The results topic and its producer. Producers always use acks=all and idempotence."""

    topic: str | None = Field(
        None,
        pattern=KAFKA_TOPIC_PATTERN,
        description="Topic that receives one result per analysed frame, keyed by camera id; unset uses `output`.",
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="Compression of record batches; snappy, lz4 and zstd need the cramjam package."
    )
    linger_ms: int = Field(
        20,
        ge=0,
        le=60_000,
        description="How long the producer waits to fill a batch before sending it, in milliseconds.",
    )
    max_batch_bytes: int = Field(
        262_144, ge=1024, description="Maximum size of one record batch per partition, in bytes."
    )
    max_message_bytes: int = Field(
        1_048_576, ge=1024, description="Largest produce request, and so the largest result or dead letter, in bytes."
    )
    buffer_results: int = Field(
        10_000,
        ge=1,
        description="Results held while they wait for the broker's acknowledgement, for example during an outage.",
    )
    overflow: Literal["block", "drop_oldest"] = Field(
        "block",
        description="Policy for a full buffer. block holds back the pipeline, so live cameras drop frames as "
        "superseded and files and Kafka cameras wait. drop_oldest discards the oldest result not yet sent.",
    )
    publish_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Deadline for the broker to acknowledge one result, in seconds; later it counts as failed.",
    )


class KafkaFramesConfig(_Settings):
    """Consumer settings of kafka:// cameras."""

    group_id: str = Field(
        "vistream", min_length=1, description="Consumer group; its committed offsets mark frames done."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts reading."
    )
    dead_letter_topic: str = Field(
        "vistream.dead-letters",
        pattern=KAFKA_TOPIC_PATTERN,
        description="Topic for frames that cannot be analysed, with the reason in the dead_letter.reason header.",
    )
    max_message_bytes: int = Field(
        8_388_608, ge=1024, description="Frames larger than this go to the dead-letter topic undecoded, in bytes."
    )
    max_image_pixels: int = Field(
        33_177_600,
        ge=1,
        description="Frames whose image header declares more pixels (width x height) go to the dead-letter topic "
        "undecoded; the default is one 7680x4320 frame.",
    )
    commit_interval_ms: int = Field(
        1000, ge=10, description="How often offsets of finished frames are committed, in milliseconds."
    )


class KafkaConfig(_Settings):
    """The Kafka cluster, the results topic and the frames topics of kafka:// cameras."""

    bootstrap_servers: list[str] = Field(
        default_factory=lambda: ["localhost:9092"], min_length=1, description="host:port of one or more brokers."
    )
    client_id: str = Field("vistream", min_length=1, description="Client id sent to the brokers, seen in their logs.")
    request_timeout_ms: int = Field(
        30_000, ge=1000, description="Deadline of one request to a broker, in milliseconds."
    )
    health_check_interval_s: float = Field(
        2.0, gt=0, description="How often the producer checks that a broker responds, for /readyz, in seconds."
    )
    results: KafkaResultsConfig = Field(default_factory=KafkaResultsConfig, description="The results topic.")
    frames: KafkaFramesConfig = Field(default_factory=KafkaFramesConfig, description="Consuming frames topics.")

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        # One "host:port,host:port" string, as Kafka's own tools take it, is accepted too.
        if isinstance(value, str):
            return [server.strip() for server in value.split(",") if server.strip()]
        return value


class Config(_Settings):
    """All settings of one vistream process."""

    cameras: list[CameraConfig] = Field(default_factory=list, description="Sources of frames.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The classifier.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Batching across cameras.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Result output.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="Metrics and health endpoints.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka results, frames and dead letters.")
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
    # A Kafka topic name has no file extension: kafka://vistream.frames keeps its whole name.
    stem = tail.rsplit(".", 1)[0] if "." in tail and not url.startswith("kafka://") else tail
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
        raise ConfigError(redact(f"invalid config ({origin}): {describe_errors(exc)}")) from None


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
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping at the top level")
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Return a YAML error as one line: the problem and its line and column in the file."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
