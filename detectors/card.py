"""The model card: how to feed a classifier and how to read its output.

A card is a small YAML file next to the ONNX model. The model itself states its input name,
shape and dtype; the card states what the model cannot: colour order, normalisation, resize
method, output kind and labels. `check_card` compares the two and rejects a card that
contradicts its model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stream.errors import ModelError

SUPPORTED_INPUT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(uint8)")


class ModelCard(BaseModel):
    """How to preprocess frames for a classifier and how to label its output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Model name reported in every result.")
    version: str | None = Field(
        None, description="Model version reported in every result; defaults to a hash of the model file."
    )
    input_size: tuple[int, int] = Field(description="Input height and width in pixels.")
    color_order: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model expects.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout of the model input.")
    mean: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="Per-channel value subtracted from 0-255 pixels, in color_order."
    )
    std: tuple[float, float, float] | None = Field(
        None, description="Per-channel divisor applied after mean, in color_order; give std or scale."
    )
    scale: float | None = Field(None, description="Single multiplier applied after mean; give std or scale.")
    resize: Literal["area", "linear", "nearest", "cubic"] = Field(
        "area", description="OpenCV interpolation used to resize frames to input_size."
    )
    output: Literal["logits", "probabilities"] = Field(
        "logits", description="Whether the first output contains logits (softmax is applied) or probabilities."
    )
    labels: Path | None = Field(
        None, description="Labels file, one class name per line in class-id order, relative to the card."
    )

    @model_validator(mode="after")
    def _one_normaliser(self) -> "ModelCard":
        if self.std is not None and self.scale is not None:
            raise ValueError("give either std or scale, not both")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be positive")
        if min(self.input_size) <= 0:
            raise ValueError("input_size values must be positive")
        return self

    def channel_scale(self) -> tuple[float, float, float]:
        """Return the per-channel multiplier applied after the mean is subtracted."""
        if self.std is not None:
            return tuple(1.0 / s for s in self.std)
        factor = 1.0 if self.scale is None else self.scale
        return (factor, factor, factor)


def default_card_path(model_path: Path) -> Path:
    return model_path.with_suffix(".card.yaml")


def load_card(path: Path) -> ModelCard:
    """Read and validate a card; a relative labels path is resolved against the card's folder."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"model card {path} not found; write one next to the model "
            "(see docs/model-card.md) or pass --model-card PATH"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read model card {path}: {exc}") from exc

    if not isinstance(raw, dict):
        raise ModelError(f"model card {path} must be a YAML mapping of card fields")
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'card'}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"invalid model card {path}: {problems}") from None

    if card.labels is not None and not card.labels.is_absolute():
        card = card.model_copy(update={"labels": path.parent / card.labels})
    return card


def load_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelError(f"cannot read labels file {path}: {exc}; fix the card's labels field") from exc
    return [line.strip() for line in lines if line.strip()]


def check_card(card: ModelCard, card_path: Path, input_shape: list, input_type: str) -> None:
    """Raise ModelError when the card contradicts the model's declared input."""
    where = f"model card {card_path}"
    if input_type not in SUPPORTED_INPUT_TYPES:
        raise ModelError(
            f"the model's input type is {input_type}; vistream feeds {', '.join(SUPPORTED_INPUT_TYPES)}"
        )
    if len(input_shape) != 4:
        raise ModelError(f"the model's input has shape {input_shape}; an image classifier needs 4 dimensions")

    if card.layout == "NCHW":
        channels, height, width = input_shape[1], input_shape[2], input_shape[3]
    else:
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]

    if isinstance(channels, int) and channels != 3:
        raise ModelError(
            f"{where} sets layout {card.layout}, but then the model's input {input_shape} has "
            f"{channels} channels instead of 3; set layout to the model's real layout"
        )
    for axis, declared, carded in (("height", height, card.input_size[0]), ("width", width, card.input_size[1])):
        if isinstance(declared, int) and declared != carded:
            raise ModelError(
                f"{where} sets input_size {list(card.input_size)}, but the model's input {input_shape} "
                f"has {axis} {declared}; set input_size to the model's size"
            )


def check_labels(labels: list[str], classes: int, labels_path: Path | None) -> None:
    if labels and len(labels) != classes:
        raise ModelError(
            f"labels file {labels_path} has {len(labels)} names but the model outputs {classes} classes; "
            "give one name per class"
        )
