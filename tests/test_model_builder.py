"""The EfficientNet-Lite0 builder: a clean graph, a cache keyed on the weights, a safe unpickler."""

import io
import pickle
import shutil
import struct

import numpy as np
import onnx
import pytest

from detectors.zoo import efficientnet_lite
from detectors.zoo.torch_legacy import LEGACY_MAGIC, LEGACY_PROTOCOL_VERSION, read_state_dict
from stream.errors import ModelError

SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Reshape", "Pad", "ConstantOfShape", "Cast"}


@pytest.fixture(scope="module")
def graph(builtin_model):
    return onnx.load(str(builtin_model)).graph


def test_graph_has_no_batch_norm_or_shape_ops(graph):
    op_types = {node.op_type for node in graph.node}

    assert "BatchNormalization" not in op_types
    assert op_types.isdisjoint(SHAPE_OPS)
    assert op_types == {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"}


def test_graph_batch_dimension_is_symbolic(graph):
    input_dims = graph.input[0].type.tensor_type.shape.dim
    output_dims = graph.output[0].type.tensor_type.shape.dim

    assert input_dims[0].dim_param == "batch"
    assert [d.dim_value for d in input_dims[1:]] == [3, 224, 224]
    assert output_dims[0].dim_param == "batch"
    assert output_dims[1].dim_value == 1000


def test_stride_two_convs_pad_asymmetrically(graph):
    convs = {node.name: node for node in graph.node if node.op_type == "Conv"}

    def attribute(node, name):
        return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)

    # TensorFlow SAME on 224 with k=3, s=2 pads 0 before and 1 after.
    assert attribute(convs["_conv_stem"], "pads") == [0, 0, 1, 1]
    # Stage 3 opens with a 5x5 stride-2 depthwise conv on 56x56: 1 before, 2 after.
    assert attribute(convs["_blocks.3._depthwise_conv"], "pads") == [1, 1, 2, 2]
    # A stride-1 5x5 conv pads symmetrically.
    assert attribute(convs["_blocks.4._depthwise_conv"], "pads") == [2, 2, 2, 2]


def test_graph_has_sixteen_blocks_with_skips(graph):
    adds = [node.name for node in graph.node if node.op_type == "Add"]
    depthwise = [node.name for node in graph.node if node.name.endswith("_depthwise_conv")]

    assert len(depthwise) == 16
    # Skips exist where stride is 1 and channels match: every repeat after a stage's first block.
    assert adds == [f"_blocks.{i}.out" for i in (2, 4, 6, 7, 9, 10, 12, 13, 14)]


@pytest.mark.parametrize(("size", "kernel", "stride", "pads"), [(224, 3, 2, (0, 1)), (112, 3, 1, (1, 1)), (28, 5, 2, (1, 2)), (7, 3, 1, (1, 1))])
def test_same_pads_match_tensorflow(size, kernel, stride, pads):
    assert efficientnet_lite.same_pads(size, kernel, stride) == pads


def test_cache_rebuilds_when_weights_change(tmp_path):
    source = tmp_path / "weights.pth"
    shutil.copyfile(efficientnet_lite.weights_path(), source)

    first, first_version = efficientnet_lite.ensure_model(tmp_path / "cache", source)
    again, again_version = efficientnet_lite.ensure_model(tmp_path / "cache", source)
    assert again == first
    assert again_version == first_version

    # Flip the last byte, which lies inside the final storage (the fc bias).
    data = bytearray(source.read_bytes())
    data[-1] ^= 0x01
    source.write_bytes(bytes(data))
    rebuilt, rebuilt_version = efficientnet_lite.ensure_model(tmp_path / "cache", source)

    assert rebuilt_version != first_version
    assert rebuilt != first
    assert rebuilt.is_file()


def legacy_file(state_pickle: bytes, keys: list[str], storages: list[np.ndarray]) -> bytes:
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL_VERSION, {"little_endian": True}):
        pickle.dump(header, out, protocol=2)
    out.write(state_pickle)
    pickle.dump(keys, out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", storage.size))
        out.write(storage.tobytes())
    return out.getvalue()


def test_unpickler_rejects_arbitrary_globals(tmp_path):
    marker = tmp_path / "executed"
    # A pickle that would call os.system if its globals were resolved.
    evil = b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode() + b"\x85R."
    path = tmp_path / "evil.pth"
    path.write_bytes(legacy_file(evil, [], []))

    with pytest.raises(ModelError, match="os.system is not allowed"):
        read_state_dict(path)
    assert not marker.exists()


def test_reader_returns_strided_tensors(tmp_path):
    values = np.arange(6, dtype="<f4")
    # A 2x3 tensor stored transposed (stride 1, 2) must come back as its logical values.
    state = (
        b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w"
        b"ctorch._utils\n_rebuild_tensor_v2\n"
        b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06NtQK\x00K\x02K\x03\x86K\x01K\x02\x86\x89)tRu."
    )
    path = tmp_path / "tiny.pth"
    path.write_bytes(legacy_file(state, ["0"], [values]))

    weights = read_state_dict(path)

    assert weights["w"].tolist() == [[0, 2, 4], [1, 3, 5]]


def test_reader_rejects_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(efficientnet_lite.weights_path().read_bytes()[:100_000])

    with pytest.raises(ModelError, match="legacy"):
        read_state_dict(path)
