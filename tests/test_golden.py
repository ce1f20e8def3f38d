"""Golden predictions of the built-in EfficientNet-Lite0 on scikit-image's sample photos.

Guards the model builder end to end: weights reading, batch-norm folding, SAME padding and the
preprocessing (RGB, INTER_AREA resize to 224, (x - 127) / 128).
"""

import importlib.util
from pathlib import Path

import cv2
import pytest

from detectors.runner import Model, ModelSpec


def skimage_image(name: str):
    spec = importlib.util.find_spec("skimage")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read {path}"
    return image


@pytest.fixture(scope="module")
def model():
    return Model(ModelSpec())


@pytest.mark.parametrize(
    ("image_name", "class_id", "label", "probability"),
    [("chelsea", 285, "Egyptian cat", 0.78), ("coffee", 967, "espresso", 0.90)],
)
def test_builtin_model_golden_prediction(model, image_name, class_id, label, probability):
    scores, _timing = model.infer([skimage_image(image_name)])

    best = int(scores[0].argmax())
    assert best == class_id
    assert model.labels[best] == label
    assert scores[0, best] == pytest.approx(probability, abs=0.01)


def test_batch_matches_single_frames(model):
    images = [skimage_image("chelsea"), skimage_image("coffee")]

    batch_scores, _ = model.infer(images)
    single_scores = [model.infer([image])[0][0] for image in images]

    for row, single in zip(batch_scores, single_scores):
        assert row == pytest.approx(single, abs=1e-4)
