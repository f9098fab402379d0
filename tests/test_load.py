"""Loading: opsets 11-23, the shape-inference fallback, and models past protobuf's 2 GB limit
(exercised with the limit lowered, so the test stays small)."""

from __future__ import annotations

import onnx
import pytest

from graphprune import load as loading
from graphprune.cli import main
from graphprune.pipeline import prune
from tests.graphs import model, node, weight
from tests.test_cli import small_cnn


@pytest.mark.parametrize("opset", [11, 13, 15, 18, 21, 23])
def test_every_supported_opset_prunes(opset, tmp_path):
    source = tmp_path / f"cnn{opset}.onnx"
    onnx.save(small_cnn(opset), source)
    result = prune(source, tmp_path / "out.onnx", ratio=0.5, providers=("cpu",))
    assert result.passed and result.written
    assert result.after.params < result.before.params


def test_shape_inference_falls_back_to_onnxruntime_symbolic(monkeypatch):
    def broken(model):
        raise onnx.shape_inference.InferenceError("simulated gap")

    made = small_cnn()
    monkeypatch.setattr(loading, "_onnx_inference", broken)
    inferred = loading.infer_shapes(made)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in inferred.graph.value_info
    }
    assert shapes["c1"] == [1, 8, 8, 8] and shapes["f"] == [1, 8]


def test_large_models_go_through_external_data(monkeypatch, tmp_path, capsys):
    """Past the protobuf limit, the output is written with external data and verification loads
    it by path; the threshold is lowered so a small model takes that road."""
    monkeypatch.setattr(loading, "EXTERNAL_DATA_THRESHOLD", 100)
    consts = {"c1.w": weight(32, 3, 3, 3), "c2.w": weight(32, 32, 3, 3), "fc.w": weight(32, 5)}
    nodes = [
        node("Conv", ["x", "c1.w"], ["c1"]),
        node("Relu", ["c1"], ["r"]),
        node("Conv", ["r", "c2.w"], ["c2"]),
        node("GlobalAveragePool", ["c2"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("MatMul", ["f", "fc.w"], ["y"]),
    ]
    source = tmp_path / "in.onnx"
    onnx.save(
        model(nodes, {"x": (1, 3, 8, 8)}, ["y"], consts),
        source,
        save_as_external_data=True,
        location="in.onnx.data",
        size_threshold=0,
    )
    out = tmp_path / "out.onnx"
    assert main(["prune", str(source), str(out), "--providers", "cpu"]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert (tmp_path / "out.onnx.data").is_file()
    reloaded = loading.load(out)
    assert tuple(next(t for t in reloaded.graph.initializer if t.name == "c2.w").dims) == (
        16,
        16,
        3,
        3,
    )
    onnx.checker.check_model(str(out), full_check=True)
