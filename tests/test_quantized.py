"""Quantized graphs: integer weights prune with their scales and zero points, or are refused.

The models are real onnxruntime.quantization outputs of small float models made here:
quantize_static in QDQ format (per tensor and per channel) and QOperator format, and
quantize_dynamic (DynamicQuantizeLinear + MatMulInteger), plus a handwritten ConvInteger chain.
Each either prunes exactly under the zero-then-prune oracle or names its barrier.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import graphprune.verify
from graphprune.ops import COMPUTED_WEIGHT, DYNAMIC_SCALE, Role, Space
from tests.graphs import (
    analyze,
    group_with,
    initializer,
    members,
    prune_every_group,
    quantized,
)
from tests.test_fuzz import run_cli

logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's pre-processing advice


def float_model(nodes, x_shape, y_shape, constants) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    return made


def weights(rng, **shapes) -> dict[str, np.ndarray]:
    return {name: (rng.standard_normal(s) * 0.5).astype(np.float32) for name, s in shapes.items()}


def float_mlp() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    rng = np.random.default_rng(0)
    return float_model(nodes, [2, 16], [2, 8], weights(rng, w1=(16, 32), b1=(32,), w2=(32, 8)))


def float_cnn() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1),
    ]
    rng = np.random.default_rng(1)
    shapes = {"c1.w": (8, 3, 3, 3), "c1.b": (8,), "c2.w": (6, 8, 3, 3), "c2.b": (6,)}
    return float_model(
        nodes, [1, 3, 8, 8], [1, 5], weights(rng, **shapes, **{"fc.w": (5, 6), "fc.b": (5,)})
    )


class Batches(CalibrationDataReader):
    """Four random batches: enough for min/max calibration of a tiny model."""

    def __init__(self, shape: tuple[int, ...]):
        rng = np.random.default_rng(2)
        self.batches = iter([{"x": rng.standard_normal(shape).astype(np.float32)}] * 4)

    def get_next(self):
        return next(self.batches, None)


def quantized_static(tmp_path, per_channel: bool, weight_type, quant_format=QuantFormat.QDQ):
    """`float_cnn` through quantize_static (activations of the weights' type: onnxruntime takes
    uint8 weights with uint8 activations only)."""
    target = quantized(
        float_cnn(), tmp_path, True, per_channel, weight_type.name, quant_format.name
    )
    return onnx.load(target), target


@pytest.mark.parametrize(
    "per_channel, weight_type", [(False, QuantType.QInt8), (True, QuantType.QUInt8)]
)
def test_qdq_conv_weights_prune_with_their_scales_and_zero_points(
    tmp_path, per_channel, weight_type
):
    made, _ = quantized_static(tmp_path, per_channel, weight_type)
    _work, dep = analyze(made)
    group = group_with(dep, "c1.w_quantized", 0)
    assert group.prunable and group.exact and group.n_units == 8
    expected_roles = {
        Space("c1.w_quantized", 0): Role.OUT,  # int8/uint8 rows, through DequantizeLinear
        Space("c1.b_quantized", 0): Role.OUT,  # the int32 bias
        Space("c2.w_quantized", 1): Role.IN,
    }
    per_channel_params = {
        ("c1.w_scale", 0),
        ("c1.w_zero_point", 0),
        ("c1.b_quantized_scale", 0),
        ("c1.b_quantized_zero_point", 0),
    }
    if per_channel:  # vector scales follow the channel: sliced with it, never masked
        expected_roles |= {Space("c1.w_scale", 0): Role.STAT}
        expected_roles |= {Space("c1.b_quantized_scale", 0): Role.STAT}
        assert per_channel_params <= members(group)
    else:
        assert not per_channel_params & members(group)
    assert {s: r for s, r in group.roles.items() if s in expected_roles} == expected_roles
    pruned, _, removals = prune_every_group(made)  # asserts the oracle passes
    kept = 8 - len(removals[group.id])
    assert initializer(pruned, "c1.w_quantized").shape == (kept, 3, 3, 3)
    assert initializer(pruned, "c2.w_quantized").shape[1] == kept
    scale = initializer(pruned, "c1.w_scale")
    assert scale.shape == ((kept,) if per_channel else ())


def test_masking_a_quantized_reader_to_zero_instead_of_its_zero_point_fails(tmp_path, monkeypatch):
    """The oracle is not blind to zero points: uint8 weights have non-zero ones, and masking
    their slices to the integer 0 (which dequantizes to -zero_point * scale) fails."""
    made, _ = quantized_static(tmp_path, True, QuantType.QUInt8)
    assert np.any(initializer(made, "c2.w_zero_point") != 0)
    monkeypatch.setattr(graphprune.verify, "zero_value", lambda index, name, shape: 0)
    with pytest.raises(AssertionError, match="FAILED"):
        prune_every_group(made)


def test_qdq_and_qoperator_at_ratio_0_reproduce_and_at_0_3_pass(tmp_path):
    _, qdq = quantized_static(tmp_path, True, QuantType.QInt8)
    for ratio in ("0", "0.3"):
        out = tmp_path / f"pruned{ratio}.onnx"
        code, stderr = run_cli(
            ["prune", str(qdq), str(out), "--ratio", ratio, "--providers", "cpu"]
        )
        assert code == 0 and out.is_file(), stderr
    assert (tmp_path / "pruned0.onnx").stat().st_size <= qdq.stat().st_size


def test_qlinear_conv_prunes_and_qoperator_ops_without_rules_are_named(tmp_path):
    made, _ = quantized_static(tmp_path, True, QuantType.QInt8, QuantFormat.QOperator)
    _work, dep = analyze(made)
    first = group_with(dep, "c1.w_quantized", 0)
    assert first.prunable and {("c1.w_scale", 0), ("c1.w_zero_point", 0)} <= members(first)
    assert first.roles[Space("c1.b_quantized", 0)] == Role.OUT
    assert first.roles[Space("c2.w_quantized", 1)] == Role.IN
    second = group_with(dep, "c2.w_quantized", 0)  # the contrib ops after it have no shapes
    assert any("QLinearGlobalAveragePool output of unknown size" in r for r in second.blocked)
    rows = [g for g in dep.all_groups if Space("fc.w_quantized", 0) in g.sizes]
    assert not any(g.prunable for g in rows)  # QGemm's rows cannot follow an unknown output
    prune_every_group(made)


def test_qlinear_matmul_and_qlinear_add_prune_exactly(tmp_path):
    """QOperator MLP: QLinearMatMul -> com.microsoft QLinearAdd (int8 bias) -> QLinearMatMul."""
    source, target = tmp_path / "float.onnx", tmp_path / "qoperator.onnx"
    onnx.save(float_mlp(), source)
    quantize_static(
        source, target, Batches((2, 16)), quant_format=QuantFormat.QOperator, per_channel=True
    )
    made = onnx.load(target)
    assert {n.op_type for n in made.graph.node} >= {"QLinearMatMul", "QLinearAdd"}
    _work, dep = analyze(made)
    hidden = group_with(dep, "w1_quantized", 1)
    assert hidden.prunable and hidden.exact
    assert {("w1_scale", 0), ("w1_zero_point", 0), ("b1_quantized", 0)} <= members(hidden)
    assert hidden.roles[Space("w2_quantized", 0)] == Role.IN
    prune_every_group(made)


def test_dynamic_quantization_blocks_the_channels_it_quantizes(tmp_path):
    """quantize_dynamic: MatMulInteger's int8 weight with its zero point is linked like a
    MatMul, but DynamicQuantizeLinear's one scale over the whole activation changes when a
    channel goes: the hidden group is refused with that reason, and prune exits 2 saying so."""
    source, target = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(float_mlp(), source)
    quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
    _work, dep = analyze(onnx.load(target))
    hidden = group_with(dep, "w1_quantized", 1)
    assert {("w1_quantized", 1), ("w1_zero_point", 0), ("w2_quantized", 0), ("b1", 0)} <= members(
        hidden
    )
    assert hidden.roles[Space("w2_quantized", 0)] == Role.IN
    assert any(DYNAMIC_SCALE in r for r in hidden.blocked)
    out = tmp_path / "pruned.onnx"
    code, stderr = run_cli(["prune", str(target), str(out), "--ratio", "0.3"])
    assert code == 2 and DYNAMIC_SCALE in stderr and not out.exists()
    code, stderr = run_cli(["prune", str(target), str(out), "--ratio", "0", "--providers", "cpu"])
    assert code == 0 and out.stat().st_size <= target.stat().st_size, stderr


def conv_integer_chain() -> onnx.ModelProto:
    """QuantizeLinear -> ConvInteger -> Cast -> Mul -> Relu -> QuantizeLinear -> ConvInteger,
    uint8 weights with non-zero (scalar: onnxruntime's kernel takes no vector) zero points."""
    rng = np.random.default_rng(3)
    quantize = {"s": np.array(0.05, np.float32), "zp": np.array(128, np.uint8)}
    constants = {
        **quantize,
        "w1": rng.integers(0, 255, (6, 3, 3, 3)).astype(np.uint8),
        "w1zp": np.array(121, np.uint8),
        "w2": rng.integers(0, 255, (4, 6, 1, 1)).astype(np.uint8),
        "w2zp": np.array(133, np.uint8),
        "s1": np.array(0.001, np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("ConvInteger", ["xq", "w1", "zp", "w1zp"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["c1"], ["c1f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["c1f", "s1"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("QuantizeLinear", ["r1", "s", "zp"], ["rq"]),
        helper.make_node("ConvInteger", ["rq", "w2", "zp", "w2zp"], ["c2"]),
        helper.make_node("Cast", ["c2"], ["y"], to=TensorProto.FLOAT),
    ]
    return float_model(nodes, [1, 3, 8, 8], [1, 4, 8, 8], constants)


def test_conv_integer_prunes_exactly():
    _work, dep = analyze(conv_integer_chain())
    group = group_with(dep, "w1", 0)
    assert group.roles == {Space("w1", 0): Role.OUT, Space("w2", 1): Role.IN}
    pruned, _, removals = prune_every_group(conv_integer_chain())
    assert initializer(pruned, "w2").shape[1] == 6 - len(removals[group.id])


def test_weight_values_are_the_dequantized_weights(tmp_path):
    """Scores must read real magnitudes, not int8 values (whose squares wrap around): the
    dequantized view equals what DequantizeLinear computes, per tensor and per channel."""
    from onnx.reference import ReferenceEvaluator

    from graphprune.ops import WeightValues

    for per_channel, weight_type in ((False, QuantType.QInt8), (True, QuantType.QUInt8)):
        folder = tmp_path / str(per_channel)
        folder.mkdir()
        made, _ = quantized_static(folder, per_channel, weight_type)
        work, dep = analyze(made)
        values = WeightValues(dep.index)
        [dequantize] = [n for n in work.graph.node if n.input[0] == "c2.w_quantized"]
        single = helper.make_model(
            helper.make_graph(
                [dequantize],
                "dq",
                [],
                [helper.make_tensor_value_info(dequantize.output[0], TensorProto.FLOAT, None)],
                [t for t in work.graph.initializer if t.name in dequantize.input],
            ),
            opset_imports=[helper.make_opsetid("", 19)],  # the reference's DequantizeLinear
        )
        [expected] = ReferenceEvaluator(single).run(None, {})
        np.testing.assert_array_equal(values["c2.w_quantized"], expected)
        scale = initializer(work, "c2.w_scale")
        np.testing.assert_array_equal(values["c2.w_scale"], scale)  # a float constant: as it is


def test_blocked_quantization_is_a_barrier_with_its_reason():
    """DequantizeLinear with block_size (opset 21): one scale per block of rows has no rule;
    the weight's output channels are refused saying so, not sliced without their scales."""
    rng = np.random.default_rng(4)
    constants = {
        "w1q": rng.integers(-127, 127, (8, 4)).astype(np.int8),
        "w1s": rng.uniform(0.01, 0.02, (4, 4)).astype(np.float32),
        "w2": (rng.standard_normal((4, 3)) * 0.5).astype(np.float32),
    }
    nodes = [
        helper.make_node("DequantizeLinear", ["w1q", "w1s"], ["w1"], axis=0, block_size=2),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    made = float_model(nodes, [2, 8], [2, 3], constants)
    made.opset_import[0].version = 21
    made.ir_version = 10
    _work, dep = analyze(made)
    hidden = group_with(dep, "w2", 0)
    assert "DequantizeLinear #0: blocked quantization (block_size) has no rule" in hidden.blocked


def test_weights_dequantized_by_cast_and_mul_are_refused_with_the_reason():
    """int8 -> Cast -> Mul(scale) -> MatMul: zeroing a stored slice does not zero what the
    MatMul reads, so the oracle would fail; the channels are refused saying why instead."""
    rng = np.random.default_rng(5)
    constants = {
        "w1q": rng.integers(-127, 127, (16, 32)).astype(np.int8),
        "w1s": rng.uniform(0.01, 0.02, 32).astype(np.float32),
        "w2q": rng.integers(-127, 127, (32, 8)).astype(np.int8),
        "w2s": rng.uniform(0.01, 0.02, 8).astype(np.float32),
    }
    nodes = []
    for k in ("1", "2"):
        nodes += [
            helper.make_node("Cast", [f"w{k}q"], [f"w{k}c"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"w{k}c", f"w{k}s"], [f"w{k}"]),
        ]
    nodes += [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    _work, dep = analyze(float_model(nodes, [2, 16], [2, 8], constants))
    hidden = group_with(dep, "w1s", 0)
    assert f"MatMul 'fc2': {COMPUTED_WEIGHT}" in hidden.blocked


def test_l2_scores_quantized_weights_by_their_dequantized_magnitudes(tmp_path):
    """int8 squares wrap around: the pipeline's scores must equal those of the real values."""
    from graphprune.passes import ScoreContext, importance

    from graphprune.pipeline import analyze_model, score

    made, _ = quantized_static(tmp_path, True, QuantType.QInt8)
    analysis = analyze_model(made)
    group = group_with(analysis.dep, "c1.w_quantized", 0)
    scores = score(analysis, "l2", groups=[group])[group.id]
    from graphprune.ops import WeightValues

    real = importance("l2").score(group, ScoreContext(WeightValues(analysis.dep.index)))
    raw = importance("l2").score(group, ScoreContext(analysis.dep.index.constants))
    np.testing.assert_allclose(scores, real)
    assert not np.allclose(raw, real)  # the raw integers would score something else


def test_compensation_on_quantized_weights_is_refused_before_any_data(tmp_path):
    _, path = quantized_static(tmp_path, True, QuantType.QInt8)
    code, stderr = run_cli(
        ["prune", str(path), str(tmp_path / "o.onnx"), "--criterion", "fluctuation", "--data-free"]
    )
    assert code == 2 and "quantized weight" in stderr and "--compensation none" in stderr
    assert not (tmp_path / "o.onnx").exists()
