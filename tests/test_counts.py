"""Parameter counts: integer weights (QDQ, MatMulInteger, ORT-quantized models) count, by dtype;
weights inside If bodies count; shape and index constants do not (graphprune.report)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.cli import main
from graphprune.report import count_params
from tests.graphs import ints, model, node, quantized, weight
from tests.test_commands import validate


def qdq_linear() -> onnx.ModelProto:
    """x[2,3] -> MatMul(DequantizeLinear(int8 W[3,4], scale[4], zp[4])) + bias[4] -> Reshape."""
    w = np.arange(12, dtype=np.int8).reshape(3, 4)
    return model(
        [
            node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=1),
            node("MatMul", ["x", "w"], ["h"]),
            node("Add", ["h", "bias"], ["hb"]),
            node("Reshape", ["hb", "target"], ["y"]),
        ],
        {"x": (2, 3)},
        ["y"],
        {
            "w_q": w,
            "w_scale": np.full(4, 0.1, np.float32),
            "w_zp": np.zeros(4, np.int8),
            "bias": weight(4),
            "target": ints(8),
        },
    )


def test_integer_weights_count_by_dtype_and_shape_constants_do_not():
    counted = count_params(qdq_linear())
    # int8: the 3x4 weight and its 4 zero points; float32: 4 scales and 4 biases;
    # the int64 Reshape target is no parameter
    assert counted.by_dtype == {"int8": 16, "float32": 8}
    assert counted.total == 24
    assert counted.counted == {"w_q", "w_zp", "w_scale", "bias"}


def test_float_shape_operands_and_integer_arithmetic_are_not_parameters():
    made = model(
        [
            node("MatMul", ["x", "w"], ["h"]),
            node("Clip", ["h", "low", "high"], ["c"]),  # bounds, not weights
            node("Cast", ["table_q"], ["table"], to=TensorProto.FLOAT),
            node("MatMul", ["c", "table"], ["y"]),  # an integer weight used through a Cast
        ],
        {"x": (2, 3)},
        ["y"],
        {
            "w": weight(3, 4),
            "low": np.array(-1.0, np.float32),
            "high": np.array(1.0, np.float32),
            "table_q": np.ones((4, 5), np.int32),
        },
    )
    counted = count_params(made)
    assert counted.by_dtype == {"int32": 20, "float32": 12}
    # the same int32 constant added to positions (shape arithmetic) is not a parameter
    positions = model(
        [node("Shape", ["x"], ["s"]), node("Add", ["s", "offset"], ["p"]),
         node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
         node("Mul", ["x", "scale"], ["xs"]), node("Add", ["xs", "pf"], ["y"])],
        {"x": (2, 2)},
        ["y"],
        {"offset": np.ones(2, np.int64), "scale": weight(2)},
    )
    assert count_params(positions).by_dtype == {"float32": 2}


def if_model() -> onnx.ModelProto:
    """y = If(flag) then x @ W_then (a Constant node) else x @ W_else (an initializer)."""
    w_then = helper.make_node(
        "Constant", [], ["w_then"], value=numpy_helper.from_array(weight(3, 2), "w_then")
    )
    then_graph = helper.make_graph(
        [w_then, helper.make_node("MatMul", ["x", "w_then"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2, 2])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_else"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(weight(3, 2), "w_else")],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "branches",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    onnx.checker.check_model(made, full_check=True)
    return made


def test_weights_inside_if_bodies_count_and_are_reported(tmp_path, capsys):
    counted = count_params(if_model())
    assert (counted.total, counted.in_subgraphs) == (12, 12)
    path = tmp_path / "if.onnx"
    onnx.save(if_model(), path)
    assert main(["inspect", str(path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert ": 12 parameters (float32; 12 in If/Loop/Scan bodies), " in first
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    validate(report, "inspect.schema.json")
    assert (report["params"], report["params_in_subgraphs"]) == (12, 12)


def small_float_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return model(
        [
            node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            node("Relu", ["c1"], ["r1"]),
            node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
        ],
        {"x": (1, 3, 8, 8)},
        ["y"],
        {
            "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
            "b1": rng.standard_normal(16).astype(np.float32),
            "w2": rng.standard_normal((8, 16, 3, 3)).astype(np.float32),
            "b2": rng.standard_normal(8).astype(np.float32),
        },
    )


def ort_quantized(tmp_path, static: bool) -> tuple:
    """(float model path, int8 model path) from onnxruntime.quantization."""
    target = quantized(small_float_cnn(), tmp_path, static=static)
    return tmp_path / "float.onnx", target


@pytest.mark.parametrize("static", [True, False], ids=["qdq-static", "dynamic"])
def test_ort_quantized_model_counts_its_int8_weights(tmp_path, capsys, static):
    _, quantized = ort_quantized(tmp_path, static)
    weights = 16 * 3 * 3 * 3 + 8 * 16 * 3 * 3  # the two convolutions' weight elements
    assert main(["inspect", str(quantized), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    validate(report, "inspect.schema.json")
    by_dtype = report["params_by_dtype"]
    assert by_dtype["int8"] >= weights  # each weight element once, plus zero points
    assert report["params"] == sum(by_dtype.values()) > weights
    assert main(["inspect", str(quantized)]) == 0
    assert "int8 " in capsys.readouterr().out.splitlines()[0]


def test_prune_and_diff_report_params_by_dtype(tmp_path, capsys):
    _, quantized = ort_quantized(tmp_path, static=True)
    out, page = tmp_path / "out.onnx", tmp_path / "report.html"
    argv = ["prune", str(quantized), str(out), "--ratio", "0", "--json", "--report", str(page)]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    validate(document, "prune.schema.json")
    assert document["before"]["params_by_dtype"]["int8"] > 0
    assert document["before"]["params"] == sum(document["before"]["params_by_dtype"].values())
    assert main(["diff", str(quantized), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    validate(report, "diff.schema.json")
    assert report["a"]["params_by_dtype"] == document["before"]["params_by_dtype"]
    int8 = document["before"]["params_by_dtype"]["int8"]
    assert f"Parameters by dtype: A {document['before']['params']:,} parameters (int8 " in (
        page.read_text()
    )
    assert 1000 <= int8 < 10**6 and f"(int8 {int8 / 1000:.1f}k, " in page.read_text()


def test_prunable_share_uses_the_same_notion_of_parameter(tmp_path, capsys):
    made = model(
        [
            node("MatMul", ["x", "w1"], ["h"]),
            node("Clip", ["h", "low", "high"], ["c"]),
            node("MatMul", ["c", "w2"], ["y"]),
        ],
        {"x": (2, 3)},
        ["y"],
        {
            "w1": weight(3, 4),
            "low": np.array(-1.0, np.float32),
            "high": np.array(1.0, np.float32),
            "w2": weight(4, 2),
        },
    )
    path = tmp_path / "m.onnx"
    onnx.save(made, path)
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # both weights are in the one prunable group; the Clip bounds are not parameters
    assert report["params"] == 20
    assert report["prunable_params_share"] == 1.0
