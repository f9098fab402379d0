"""`--ratio 0` reproduces the model without growing its file, and a prune that was asked to
remove something but removes nothing exits 2 with the reason, writing nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.cli import main
from graphprune.pipeline import compact, constant_names

METADATA_SLACK = 300  # bytes a rewrite may add (node names, a metadata entry)
CHANNELS = 32


def filled_cnn(shared_bias: bool = True) -> onnx.ModelProto:
    """Conv -> Relu -> Conv (+ a ConstantOfShape filled with 0.5); both convs read one bias
    vector (a deduplicating exporter's sharing) when `shared_bias`."""
    rng = np.random.default_rng(0)
    constants = {
        "w1": rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(CHANNELS).astype(np.float32),
        "w2": rng.standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32),
        "b2": rng.standard_normal(CHANNELS).astype(np.float32),
        "shape": np.array([1, CHANNELS, 8, 8], np.int64),
    }
    half = numpy_helper.from_array(np.array([0.5], np.float32), "value")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b" if shared_bias else "b2"], ["c2"], pads=[1] * 4),
        helper.make_node("ConstantOfShape", ["shape"], ["half"], value=half),
        helper.make_node("Add", ["c2", "half"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "filled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])],
        [numpy_helper.from_array(v, k) for k, v in constants.items() if shared_bias or k != "b"]
        + ([numpy_helper.from_array(constants["b"], "b")] if not shared_bias else []),
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    onnx.checker.check_model(made, full_check=True)
    return made


def as_constant_nodes(made: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every initializer a Constant node."""
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in made.graph.initializer]
    copy = onnx.ModelProto()
    copy.CopyFrom(made)
    del copy.graph.initializer[:]
    rest = list(copy.graph.node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes + rest)
    return copy


def qdq(tmp_path, dense: onnx.ModelProto):
    """`dense` quantized by onnxruntime.quantization.quantize_static (QDQ, per-channel int8)."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    source, quantized = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(dense, source)
    rng = np.random.default_rng(1)
    samples = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}] * 2)

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    quantization.quantize_static(
        str(source),
        str(quantized),
        Reader(),
        quant_format=quantization.QuantFormat.QDQ,
        per_channel=True,
        weight_type=quantization.QuantType.QInt8,
    )
    return quantized


@pytest.mark.parametrize("form", ["qdq", "constant-nodes", "float"])
def test_ratio_zero_never_grows_the_file(tmp_path, capsys, form):
    if form == "qdq":
        source = qdq(tmp_path, filled_cnn())
    else:
        made = filled_cnn()
        source = tmp_path / "model.onnx"
        onnx.save(as_constant_nodes(made) if form == "constant-nodes" else made, source)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(source), str(out), "--ratio", "0", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["written"] and document["pruned_groups"] == 0
    assert out.stat().st_size <= source.stat().st_size + METADATA_SLACK
    # the folded fill is a ConstantOfShape again, the shared bias one tensor again
    written = onnx.load(out)
    assert sum(n.op_type == "ConstantOfShape" for n in written.graph.node) == 1
    assert constant_names(written) <= constant_names(onnx.load(source))


def test_compact_shares_copies_again_but_never_merges_the_inputs_own_tensors():
    made = filled_cnn(shared_bias=False)
    made.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "left"))
    made.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "right"))
    original = frozenset(constant_names(made))
    b2 = next(t for t in made.graph.initializer if t.name == "b2")
    copy = numpy_helper.from_array(numpy_helper.to_array(b2), "b2_copy")
    made.graph.initializer.append(copy)
    made.graph.node[2].input[2] = "b2_copy"  # b2's value under a name the input did not have
    compact(made, original)
    names = constant_names(made)
    assert "b2_copy" not in names and made.graph.node[2].input[2] == "b2"
    assert {"left", "right"} <= names  # equal, but both the input's own: left alone
