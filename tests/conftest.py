"""Shared fixtures: the sample clip, the built-in model, the result schema and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from detectors.zoo.efficientnet_lite import ensure_model
from stream.results import SCHEMA_PATH
from stream.sample import sample_video_path
from tests.models import tiny_classifier, write_tiny_card

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def sample_video() -> Path:
    return sample_video_path()


@pytest.fixture(scope="session")
def builtin_model() -> Path:
    path, _version = ensure_model()
    return path


@pytest.fixture(scope="session")
def result_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def results(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture
def run_cli(tmp_path):
    """Run `vistream ARGS...` in a subprocess, as a user would, and capture its output.

    `vistream run` gets `--http-port 0` unless ARGS set a port, so test runs in parallel on one
    machine never compete for the default port 9108.
    """

    def run(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> CliRun:
        if "run" in args and "--http-port" not in args:
            at = args.index("run") + 1
            args = (*args[:at], "--http-port", "0", *args[at:])
        completed = subprocess.run(
            [sys.executable, "-m", "stream.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )
        return CliRun(completed.returncode, completed.stdout, completed.stderr)

    return run


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small, fast ONNX classifier with its card, as `model` config settings."""
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_classifier(folder / "tiny.onnx")
    card = write_tiny_card(folder / "tiny.card.yaml")
    return {"path": str(model), "card": str(card), "top_k": 2}
