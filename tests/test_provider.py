"""Execution provider choice and verification: a requested GPU provider never silently becomes CPU."""

import logging

import onnxruntime as ort
import pytest

from detectors.runner import Model, ModelSpec, verify_provider
from stream.errors import ModelError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

cpu_only = pytest.mark.skipif(
    CUDA in ort.get_available_providers(), reason="this onnxruntime build has CUDA, so cuda is not rejected"
)


@cpu_only
def test_cuda_rejected_on_cpu_build():
    with pytest.raises(ModelError) as raised:
        Model(ModelSpec(provider="cuda"))

    message = str(raised.value)
    assert "execution provider 'cuda' is not available" in message
    assert "onnxruntime-gpu" in message
    assert "model.provider" in message


@cpu_only
def test_auto_runs_on_cpu():
    model = Model(ModelSpec(provider="auto"))

    assert model.provider == CPU


def test_explicit_provider_fallback_rejected():
    with pytest.raises(ModelError, match="model.provider is 'cuda' but onnxruntime fell back to CPUExecutionProvider"):
        verify_provider("cuda", [CUDA, CPU], [CPU])


def test_auto_fallback_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="detectors.runner"):
        active = verify_provider("auto", [CUDA, CPU], [CPU])

    assert active == CPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert CUDA in warnings[0].getMessage()
    assert CPU in warnings[0].getMessage()


def test_provider_that_runs_passes_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="detectors.runner"):
        active = verify_provider("cuda", [CUDA, CPU], [CUDA, CPU])

    assert active == CUDA
    assert caplog.records == []


@cpu_only
def test_cli_rejects_unavailable_provider(run_cli, tmp_path):
    config = tmp_path / "vistream.yaml"
    config.write_text("model:\n  provider: cuda\n")

    run = run_cli("run", "--config", str(config), "--max-frames", "1")

    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.strip().splitlines()[-1].startswith("vistream: error: execution provider 'cuda'")
    assert "Traceback" not in run.stderr
