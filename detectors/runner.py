"""onnxruntime sessions: loading, provider choice and verification, fixed-batch padding."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from detectors.card import ModelCard, check_card, check_labels, default_card_path, load_card, load_labels
from detectors.cpus import usable_cpus
from detectors.postprocess import softmax
from detectors.preprocess import Preprocessor
from detectors.zoo import efficientnet_lite
from stream.errors import ModelError

log = logging.getLogger(__name__)

Provider = Literal["auto", "cpu", "cuda", "tensorrt"]

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}
_BUILTIN_CARD = Path(efficientnet_lite.__file__).with_name("efficientnet-lite0.card.yaml")


@dataclass(frozen=True)
class ModelSpec:
    """The model file, its card and the settings to run it with."""

    path: Path | None = None  # None selects the built-in EfficientNet-Lite0
    card_path: Path | None = None
    provider: Provider = "auto"
    workers: int = 1
    intra_op_threads: int | None = None
    session_per_worker: bool = False


@dataclass(frozen=True)
class BatchTiming:
    preprocess_s: float
    inference_s: float


def requested_providers(provider: Provider) -> list[str]:
    """Return the execution providers to ask onnxruntime for, best first."""
    available = ort.get_available_providers()
    if provider == "auto":
        preferred = [PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]]
        return [p for p in preferred if p in available] + [PROVIDER_NAMES["cpu"]]
    name = PROVIDER_NAMES[provider]
    if name not in available:
        raise ModelError(
            f"execution provider {provider!r} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt "
            "or set model.provider to auto or cpu"
        )
    return [name] if provider == "cpu" else [name, PROVIDER_NAMES["cpu"]]


def verify_provider(provider: Provider, requested: list[str], active: list[str]) -> str:
    """Return the provider that really runs the model; raise if an explicit choice fell back."""
    actual = active[0] if active else "none"
    if provider != "auto" and actual != requested[0]:
        raise ModelError(
            f"model.provider is {provider!r} but onnxruntime fell back to {actual}; "
            "check the CUDA/TensorRT libraries or set model.provider to auto or cpu"
        )
    if provider == "auto" and actual != requested[0]:
        log.warning("execution provider %s was requested but %s is active; running on %s", requested[0], actual, actual)
    return actual


class Model:
    """A loaded classifier: sessions, card, labels and the input it expects.

    `infer` is thread-safe and runs in the caller's thread; the pipeline calls it from worker
    threads, never from the event loop.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        path, card_path, default_version = _resolve(spec)
        self.path = path
        self.card_path = card_path
        self.card: ModelCard = load_card(card_path)
        self.name = self.card.name
        self.version = self.card.version or default_version or _file_version(path)

        self.intra_op_threads = spec.intra_op_threads or max(1, usable_cpus() // max(1, spec.workers))
        self._requested = requested_providers(spec.provider)
        first = self._new_session()
        self.provider = verify_provider(spec.provider, self._requested, first.get_providers())
        self._shared = first
        self._spare = [first]
        self._local = threading.local()
        self._lock = threading.Lock()

        model_input = first.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = list(model_input.shape)
        check_card(self.card, card_path, self.input_shape, model_input.type)
        self.input_dtype = np.dtype(_DTYPES[model_input.type])
        batch_dim = self.input_shape[0]
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None

        self.preprocessor = Preprocessor(self.card, self.input_dtype)
        self.labels = load_labels(self.card.labels) if self.card.labels else []
        self.classes = self._probe_classes(first)
        check_labels(self.labels, self.classes, self.card.labels)
        log.info(
            "model %s %s loaded from %s: input %s %s, provider %s, intra-op threads %d",
            self.name, self.version, path, self.input_name, self.input_shape, self.provider, self.intra_op_threads,
        )

    def _new_session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=self._requested)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(
                f"cannot load model {self.path}: {str(exc).splitlines()[0]}; pass an ONNX model file to --model"
            ) from exc

    def _probe_classes(self, session: ort.InferenceSession) -> int:
        declared = session.get_outputs()[0].shape
        if len(declared) == 2 and isinstance(declared[1], int):
            return declared[1]
        batch = np.zeros(self.preprocessor.batch_shape(self.fixed_batch or 1), dtype=self.input_dtype)
        return int(session.run(None, {self.input_name: batch})[0].shape[-1])

    def _session(self) -> ort.InferenceSession:
        if not self.spec.session_per_worker:
            return self._shared
        session = getattr(self._local, "session", None)
        if session is None:
            # The session made at load time goes to the first worker thread; the others build their own.
            with self._lock:
                session = self._spare.pop() if self._spare else self._new_session()
            self._local.session = session
        return session

    def infer(self, images: list[np.ndarray]) -> tuple[np.ndarray, BatchTiming]:
        """Classify BGR frames; return per-class probabilities [len(images), classes] and timings."""
        start = time.perf_counter()
        batch = np.empty(self.preprocessor.batch_shape(len(images)), dtype=self.input_dtype)
        for index, image in enumerate(images):
            self.preprocessor.fill(batch, index, image)
        prepared = time.perf_counter()

        scores = self._run(batch)
        if self.card.output == "logits":
            scores = softmax(scores.astype(np.float32, copy=False))
        done = time.perf_counter()
        return scores, BatchTiming(prepared - start, done - prepared)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        session = self._session()
        if self.fixed_batch is None:
            return session.run(None, {self.input_name: batch})[0]

        # A model with a fixed batch dimension gets chunks of exactly that size: the last chunk
        # is padded with zeros and the padded rows' outputs are dropped.
        outputs = []
        size = self.fixed_batch
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            real = len(chunk)
            if real < size:
                padding = np.zeros((size - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, padding])
            outputs.append(session.run(None, {self.input_name: chunk})[0][:real])
        return np.concatenate(outputs)


def _resolve(spec: ModelSpec) -> tuple[Path, Path, str | None]:
    """Return the model path, its card path and a default version for the built-in model."""
    if spec.path is None:
        path, version = efficientnet_lite.ensure_model()
        return path, spec.card_path or _BUILTIN_CARD, version

    path = spec.path
    if not path.is_file():
        raise ModelError(f"model file {path} not found; pass an existing ONNX file to --model")
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx raises several unrelated types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file {path} is not a valid ONNX model ({reason}); pass an ONNX file to --model") from None
    return path, spec.card_path or default_card_path(path), None


def _file_version(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256-{digest.hexdigest()[:12]}"
