"""Variants of the built-in model for tests of arbitrary classifiers and model cards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import helper, numpy_helper

from detectors.zoo import efficientnet_lite

LABELS = Path(efficientnet_lite.__file__).with_name("imagenet_labels.txt")

BASE_CARD = {
    "name": "variant",
    "version": "test-1",
    "input_size": [224, 224],
    "color_order": "RGB",
    "layout": "NCHW",
    "mean": [127.0, 127.0, 127.0],
    "std": [128.0, 128.0, 128.0],
    "output": "logits",
    "labels": str(LABELS),
}


def write_card(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**BASE_CARD, **changes}))
    return path


def fixed_batch_model(builtin: Path, target: Path, batch: int) -> Path:
    """The built-in model with its batch dimension fixed to `batch`."""
    model = onnx.load(str(builtin))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(target))
    return target


def nhwc_bgr_model(builtin: Path, target: Path) -> Path:
    """The built-in model behind an NHWC, BGR input: it transposes and reverses channels itself."""
    model = onnx.load(str(builtin))
    graph = model.graph
    graph.input[0].name = "pixels"
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value, dims[3].dim_value = 224, 224, 3

    graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_to_rgb"))
    graph.node.insert(0, helper.make_node("Transpose", ["pixels"], ["pixels_nchw_bgr"], perm=[0, 3, 1, 2]))
    graph.node.insert(1, helper.make_node("Gather", ["pixels_nchw_bgr", "bgr_to_rgb"], ["images"], axis=1))
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def tiny_classifier(target: Path, classes: int = 4) -> Path:
    """A classifier of 8x8 NCHW float images that costs microseconds per frame: mean colour to logits.

    Tests that push thousands of frames through the pipeline use it in place of the built-in
    model. Its batch dimension is symbolic, and `write_tiny_card` writes its card.
    """
    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / (3 * classes)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weights"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def write_tiny_card(path: Path) -> Path:
    return write_card(path, name="tiny", input_size=[8, 8], labels=None)
