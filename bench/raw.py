"""Baselines without vistream: onnxruntime alone on prepared tensors, and a naive per-frame loop."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from detectors.card import ModelCard
from detectors.postprocess import softmax, top_k
from detectors.preprocess import Preprocessor

CPU_PROVIDER = ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Layout:
    """The spread of inference over threads: worker threads, sessions and intra-op threads per session."""

    workers: int
    shared_session: bool
    threads: int

    @property
    def sessions(self) -> int:
        return 1 if self.shared_session else self.workers

    @property
    def label(self) -> str:
        if self.workers == 1:
            return f"1 worker, {self.threads} threads"
        sessions = "shared session" if self.shared_session else "own sessions"
        return f"{self.workers} workers, {sessions}, {self.threads} thread{'s' if self.threads > 1 else ''} each"


def candidate_layouts(cpus: int) -> list[Layout]:
    """Return the layouts worth trying on `cpus` CPUs: one big session, or several small ones."""
    layouts = [Layout(1, True, cpus)]
    for workers in sorted({2, cpus}):
        if 1 < workers <= cpus:
            threads = cpus // workers
            layouts += [Layout(workers, True, threads), Layout(workers, False, threads)]
    return layouts


def new_session(model_path: Path, threads: int) -> ort.InferenceSession:
    """Create a session with the options that vistream's Model uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), sess_options=options, providers=CPU_PROVIDER)


def prepare_tensors(images: list[np.ndarray], card: ModelCard) -> np.ndarray:
    """Preprocess every frame once into one NCHW float32 array, so raw runs measure inference only."""
    preprocessor = Preprocessor(card, np.float32)
    tensors = np.empty(preprocessor.batch_shape(len(images)), dtype=np.float32)
    for index, image in enumerate(images):
        preprocessor.fill(tensors, index, image)
    return tensors


@dataclass(frozen=True)
class Reading:
    frames_per_s: float
    # CPU time of the whole process per frame. Unlike frames/s it hardly changes when other
    # processes take CPU time, but it includes onnxruntime's spin-waiting with several threads.
    cpu_ms_per_frame: float


def measure_raw(
    model_path: Path, tensors: np.ndarray, layout: Layout, batch: int, duration_s: float,
    preprocess_from: tuple[list[np.ndarray], Preprocessor] | None = None,
) -> Reading:
    """Measure `layout.workers` threads calling session.run on batches of `batch`.

    Without `preprocess_from`, the workers run the prepared `tensors`. With it (decoded frames
    and a preprocessor), each worker preprocesses every batch before running it, as a
    hand-written loop would. Each worker's rate is its frames divided by the time to its last
    finished run, so a run still in progress when the time is up neither counts nor biases it.
    """
    sessions = [new_session(model_path, layout.threads) for _ in range(layout.sessions)]
    input_name = sessions[0].get_inputs()[0].name
    batches = [np.ascontiguousarray(tensors[i : i + batch]) for i in range(0, len(tensors) - batch + 1, batch)]
    for session in sessions:
        session.run(None, {input_name: batches[0]})  # warm-up: the first run allocates

    def inputs() -> Iterator[np.ndarray]:
        if preprocess_from is None:
            yield from itertools.cycle(batches)
            return
        images, preprocessor = preprocess_from
        buffer = np.empty(preprocessor.batch_shape(batch), dtype=np.float32)
        for first in itertools.cycle(range(0, len(images) - batch + 1, batch)):
            for row in range(batch):
                preprocessor.fill(buffer, row, images[first + row])
            yield buffer

    stop = threading.Event()
    start = threading.Barrier(layout.workers + 1)
    rates = [0.0] * layout.workers
    counts = [0] * layout.workers

    def work(index: int) -> None:
        session = sessions[index % len(sessions)]
        frames = 0
        start.wait()
        began = time.perf_counter()
        for chunk in inputs():
            session.run(None, {input_name: chunk})
            frames += len(chunk)
            if stop.is_set():
                break
        rates[index] = frames / (time.perf_counter() - began)
        counts[index] = frames

    workers = [threading.Thread(target=work, args=(i,), name=f"bench-raw-{i}") for i in range(layout.workers)]
    for worker in workers:
        worker.start()
    start.wait()
    cpu_began = time.process_time()
    time.sleep(duration_s)
    stop.set()
    for worker in workers:
        worker.join()
    cpu_s = time.process_time() - cpu_began
    return Reading(sum(rates), cpu_s * 1000.0 / sum(counts))


def measure_naive(
    model_path: Path, card: ModelCard, labels: list[str], images: list[np.ndarray], duration_s: float
) -> Reading:
    """Measure one thread that preprocesses, runs batch 1 and serialises each frame in turn.

    The session keeps onnxruntime's default options, as code written without tuning would.
    """
    session = ort.InferenceSession(str(model_path), providers=CPU_PROVIDER)
    input_name = session.get_inputs()[0].name
    preprocessor = Preprocessor(card, np.float32)

    def classify(image: np.ndarray) -> bytes:
        tensor = preprocessor.prepare(image).transpose(2, 0, 1)[np.newaxis]
        scores = softmax(session.run(None, {input_name: tensor})[0])
        labels_top = top_k(scores, 5, labels)[0]
        result = {"labels": [{"class_id": p.class_id, "label": p.label, "score": p.score} for p in labels_top]}
        return json.dumps(result).encode("utf-8")

    classify(images[0])
    frames = 0
    began, cpu_began = time.perf_counter(), time.process_time()
    for image in itertools.cycle(images):
        classify(image)
        frames += 1
        if time.perf_counter() - began >= duration_s:
            break
    cpu_s = time.process_time() - cpu_began
    return Reading(frames / (time.perf_counter() - began), cpu_s * 1000.0 / frames)
