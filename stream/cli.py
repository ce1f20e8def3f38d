"""Command line: arguments -> Config -> App."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from stream.config import Config, load_config
from stream.errors import ConfigError, VistreamError
from stream.publish_frames import add_publish_frames_parser, publish_frames
from stream.redact import install_log_redaction, redact
from stream.sample import sample_video_path

log = logging.getLogger("vistream")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def package_version() -> str:
    try:
        return importlib.metadata.version("vistream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


# argparse types for numeric options, so an invalid value is reported against the option the
# user typed rather than the config key it sets.
def _parse_number(text: str, cast: type, kind: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _parse_number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _parse_number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def tcp_port(text: str) -> int:
    value = _parse_number(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vistream", description="Streaming video analytics with ONNX classifiers.")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level and show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"vistream {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="analyse cameras or video files and emit one JSON result per analysed frame",
        description="With no options, analyses the bundled sample clip with the built-in EfficientNet-Lite0.",
    )
    run.add_argument("--config", type=Path, help="YAML config file; options given here override it")
    # Also accepted after the subcommand, where users put it (`make run ARGS=--debug` included).
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    run.add_argument(
        "--source",
        help="one video file path, rtsp:// URL, device index or kafka://TOPIC, replacing the config's cameras",
    )
    run.add_argument("--camera-id", help="camera id for --source (default: derived from its name)")
    run.add_argument("--max-frames", type=positive_int, help="stop each camera after analysing this many frames")
    run.add_argument("--fps", type=positive_float, help="analyse at most this many frames per second of video time")
    run.add_argument("--loop", action="store_true", default=None, help="restart video files at their end")
    run.add_argument("--top-k", type=positive_int, help="number of labels per result (default 5)")
    run.add_argument("--model", type=Path, help="ONNX classifier (default: built-in EfficientNet-Lite0)")
    run.add_argument("--model-card", type=Path, help="model card for --model (default: MODEL.card.yaml)")
    run.add_argument(
        "--output",
        type=Path,
        help="append results to this JSON Lines file instead of standard output (missing folders are created)",
    )
    run.add_argument(
        "--http-port", type=tcp_port, help="TCP port for /metrics, /healthz and /readyz (default 9108; 0 picks a free port)"
    )
    run.add_argument(
        "--kafka-bootstrap", metavar="HOST:PORT[,...]", help="Kafka brokers to connect to (default localhost:9092)"
    )
    run.add_argument(
        "--kafka-results-topic", metavar="TOPIC", help="publish results to this Kafka topic instead of standard output"
    )
    add_publish_frames_parser(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Merge the config file, the command-line options and the defaults, in that order of precedence."""
    overrides: dict[str, Any] = {}
    for option, key in (
        ("top_k", "model.top_k"),
        ("model", "model.path"),
        ("model_card", "model.card"),
        ("output", "output.path"),
        ("http_port", "http.port"),
        ("kafka_bootstrap", "kafka.bootstrap_servers"),
        ("kafka_results_topic", "kafka.results.topic"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value

    config = load_config(args.config, overrides)
    cameras = [camera.model_dump(exclude_unset=True) for camera in config.cameras]
    if args.source is not None:
        cameras = [{"url": args.source}]
    elif not cameras:
        cameras = [{"url": str(sample_video_path())}]
    if args.camera_id is not None:
        if len(cameras) != 1:
            raise ConfigError("--camera-id applies to a single camera; set ids in the config file instead")
        cameras[0]["id"] = args.camera_id

    for camera in cameras:
        for option, key in (("max_frames", "max_frames"), ("fps", "fps"), ("loop", "loop")):
            value = getattr(args, option)
            if value is not None:
                camera[key] = value
        if "password" in camera and camera["password"] is not None:
            camera["password"] = camera["password"].get_secret_value()
    return load_config(args.config, {**overrides, "cameras": cameras})


def configure_logging(debug: bool) -> None:
    # OpenCV and FFmpeg print to stderr on their own; vistream reports their failures itself,
    # so they stay quiet unless --debug is given. Both are read when cv2 is first used.
    if not debug:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_log_redaction()


async def run_app(config: Config) -> None:
    from stream.app import App  # imported late so `vistream --help` stays fast

    await App(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    try:
        if args.command == "run":
            asyncio.run(run_app(config_from_args(args)))
        elif args.command == "publish-frames":
            asyncio.run(publish_frames(args))
        return EXIT_OK
    except VistreamError as exc:
        if args.debug:
            log.exception("failed")
        print(f"vistream: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
