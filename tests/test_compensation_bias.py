"""FLAP bias compensation: the consumer's mean output over the calibration data is kept exactly,
whether the delta goes into an existing bias (Gemm C with alpha and beta, Conv B, the Add after
a MatMul) or into a new Add, and the zero-then-prune oracle still passes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune.pipeline import prune
from graphprune.verify import random_inputs, run
from tests.graphs import model, node, weight
from tests.test_calibrate import dynamic_batch

RNG = np.random.default_rng(11)


def mlp_without_bias():
    consts = {"w1": weight(6, 12), "b1": weight(12), "w2": weight(12, 5)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["h"]),
        node("MatMul", ["h", "w2"], ["y"]),
    ]
    return model(nodes, {"x": (1, 3, 6)}, ["y"], consts), (1, 3, 6)


def mlp_with_bias_add():
    consts = {"w1": weight(6, 12), "w2": weight(12, 5), "b2": weight(5)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Relu", ["m1"], ["h"]),
        node("MatMul", ["h", "w2"], ["m2"]),
        node("Add", ["m2", "b2"], ["y"]),
    ]
    return model(nodes, {"x": (1, 3, 6)}, ["y"], consts), (1, 3, 6)


def gemm_alpha_beta():
    consts = {"w1": weight(12, 6), "c1": weight(12), "w2": weight(12, 5), "c2": weight(1, 5)}
    nodes = [
        node("Gemm", ["x", "w1", "c1"], ["g1"], transB=1),
        node("Relu", ["g1"], ["h"]),
        node("Gemm", ["h", "w2", "c2"], ["y"], alpha=0.5, beta=2.0),
    ]
    return model(nodes, {"x": (1, 6)}, ["y"], consts), (1, 6)


def conv_with_bias():
    consts = {"w1": weight(12, 3, 3, 3), "w2": weight(5, 12, 3, 3), "b2": weight(5)}
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["h"]),
        node("Conv", ["h", "w2", "b2"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1]),
    ]
    return model(nodes, {"x": (1, 3, 6, 6)}, ["y"], consts), (1, 3, 6, 6)


LAYERS = {
    "matmul, new Add": (mlp_without_bias, 1),
    "matmul + bias Add": (mlp_with_bias_add, 0),
    "gemm alpha beta": (gemm_alpha_beta, 0),
    "conv bias": (conv_with_bias, 0),
}


def positions_mean(y: np.ndarray) -> np.ndarray:
    """Mean of each output channel over every row (batch, token, pixel)."""
    channel_axis = 1 if y.ndim == 4 else y.ndim - 1
    return np.moveaxis(y, channel_axis, -1).reshape(-1, y.shape[channel_axis]).mean(axis=0)


@pytest.mark.parametrize("case", list(LAYERS))
def test_bias_compensation_keeps_the_consumers_mean_output_exactly(case, tmp_path):
    build, new_adds = LAYERS[case]
    made, shape = build()
    source = tmp_path / "dense.onnx"
    onnx.save(dynamic_batch(made), source)
    calib = {"x": (RNG.standard_normal((24, *shape[1:])) + 0.5).astype(np.float32)}
    dense = positions_mean(run(onnx.load(source), calib)["y"].astype(np.float64))
    means = {}
    for compensation in ("none", "own"):
        out = tmp_path / f"{compensation}.onnx"
        result = prune(
            source,
            out,
            ratio=0.5,
            criterion="fluctuation",
            calib=calib,
            compensation=compensation,
            providers=("cpu",),
            input_shapes={"x": (2, *shape[1:])},
        )
        assert result.passed and result.written, [c.line() for c in result.checks]
        means[compensation] = positions_mean(run(onnx.load(out), calib)["y"].astype(np.float64))
    np.testing.assert_allclose(means["own"], dense, rtol=1e-5, atol=1e-5)
    assert np.abs(means["none"] - dense).max() > 1e-2  # pruning alone does move the mean
    assert result.compensation["new_adds"] == new_adds
    assert result.compensation["bias_deltas"] == 1
    # the report's distances are the pruned models' against the dense one, on the oracle inputs
    inputs = random_inputs(onnx.load(source), 0, {"x": (2, *shape[1:])})
    dense_y = run(onnx.load(source), inputs)["y"]
    for key, compensation in (("with", "own"), ("without", "none")):
        pruned_y = run(onnx.load(tmp_path / f"{compensation}.onnx"), inputs)["y"]
        reported = result.compensation[key][0]
        assert reported["name"] == "y"
        assert reported["max_abs"] == pytest.approx(np.abs(pruned_y - dense_y).max(), rel=1e-5)


def test_a_new_add_after_a_biasless_conv_is_cut_with_its_pruned_outputs(tmp_path):
    consts = {"w1": weight(8, 3, 3, 3), "w2": weight(8, 8, 3, 3), "w3": weight(4, 8, 1, 1)}
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["h1"]),
        node("Conv", ["h1", "w2"], ["c2"], pads=[1, 1, 1, 1]),  # no bias: a new Add
        node("Relu", ["c2"], ["h2"]),
        node("Conv", ["h2", "w3"], ["y"]),
    ]
    source = tmp_path / "dense.onnx"
    onnx.save(model(nodes, {"x": (1, 3, 6, 6)}, ["y"], consts), source)
    calib = {"x": RNG.standard_normal((8, 3, 6, 6)).astype(np.float32)}
    out = tmp_path / "pruned.onnx"
    result = prune(source, out, ratio=0.5, criterion="fluctuation", calib=calib, providers=("cpu",))
    assert result.passed and result.written, [c.line() for c in result.checks]
    assert result.compensation["new_adds"] == 2  # after conv2 and after conv3
    pruned = onnx.load(out)
    adds = [n for n in pruned.graph.node if n.op_type == "Add"]
    constants = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    shapes = sorted(constants[n.input[1]].shape for n in adds)
    assert shapes == [(4, 1, 1), (4, 1, 1)]  # conv2's 8 outputs halved; conv3's 4 outputs kept
    assert [o.name for o in pruned.graph.output] == ["y"]
