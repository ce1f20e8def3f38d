"""Scores to labelled top-k predictions (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Prediction:
    class_id: int
    label: str
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return row-wise probabilities; subtracting the row max keeps exp from overflowing."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int, labels: list[str]) -> list[list[Prediction]]:
    """Return the k highest-scoring classes of each row, best first.

    A class without a name in `labels` is labelled by its id, so a short or missing labels
    file never hides a prediction.
    """
    k = min(k, scores.shape[-1])
    candidates = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    rows = []
    for row_scores, row_candidates in zip(scores, candidates):
        ordered = row_candidates[np.argsort(-row_scores[row_candidates], kind="stable")]
        rows.append([_prediction(int(c), float(row_scores[c]), labels) for c in ordered])
    return rows


def _prediction(class_id: int, score: float, labels: list[str]) -> Prediction:
    label = labels[class_id] if class_id < len(labels) else str(class_id)
    return Prediction(class_id, label, score)
