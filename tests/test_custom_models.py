"""Any ONNX classifier with a model card: fixed batch sizes, other layouts and colour orders."""

import pytest

from detectors.runner import Model, ModelSpec
from tests.models import fixed_batch_model, nhwc_bgr_model, write_card
from tests.test_golden import skimage_image


@pytest.fixture(scope="module")
def photos():
    return [skimage_image("chelsea"), skimage_image("coffee")]


@pytest.fixture(scope="module")
def builtin(photos):
    model = Model(ModelSpec())
    return model, model.infer(photos)[0]


@pytest.mark.parametrize("fixed", [1, 8])
@pytest.mark.parametrize("frames", [1, 3, 8, 11])
def test_fixed_batch_model_handles_any_batch(tmp_path_factory, builtin_model, builtin, photos, fixed, frames):
    folder = tmp_path_factory.mktemp(f"fixed{fixed}")
    path = fixed_batch_model(builtin_model, folder / "model.onnx", fixed)
    write_card(folder / "model.card.yaml")
    model = Model(ModelSpec(path=path))
    images = [photos[i % 2] for i in range(frames)]

    scores, _ = model.infer(images)

    assert model.fixed_batch == fixed
    assert scores.shape == (frames, 1000)
    _, reference = builtin
    for i, row in enumerate(scores):
        assert row == pytest.approx(reference[i % 2], abs=1e-4)


def test_nhwc_bgr_model_reads_its_card(tmp_path, builtin_model, builtin, photos):
    path = nhwc_bgr_model(builtin_model, tmp_path / "nhwc.onnx")
    write_card(tmp_path / "nhwc.card.yaml", layout="NHWC", color_order="BGR", name="nhwc-variant")
    model = Model(ModelSpec(path=path))

    scores, _ = model.infer(photos)

    assert model.input_name == "pixels"
    assert model.name == "nhwc-variant"
    assert model.version == "test-1"
    assert int(scores[0].argmax()) == 285
    assert int(scores[1].argmax()) == 967
    _, reference = builtin
    assert scores == pytest.approx(reference, abs=1e-4)


def test_card_scale_and_probabilities_output(tmp_path, builtin_model):
    path = fixed_batch_model(builtin_model, tmp_path / "m.onnx", 1)
    card = write_card(tmp_path / "m.card.yaml", mean=[127.0, 127.0, 127.0], std=None, scale=1 / 128)
    model = Model(ModelSpec(path=path, card_path=card))

    scores, _ = model.infer([skimage_image("chelsea")])

    assert int(scores[0].argmax()) == 285
    assert scores[0].sum() == pytest.approx(1.0, abs=1e-4)


def test_cli_runs_custom_model(run_cli, tmp_path, builtin_model, result_validator):
    path = fixed_batch_model(builtin_model, tmp_path / "fixed.onnx", 1)
    write_card(tmp_path / "fixed.card.yaml", name="fixed-one", version="7")

    run = run_cli("run", "--model", str(path), "--max-frames", "5")

    assert run.returncode == 0, run.stderr
    assert len(run.results) == 5
    for result in run.results:
        result_validator.validate(result)
        assert result["model"] == {"name": "fixed-one", "version": "7"}
