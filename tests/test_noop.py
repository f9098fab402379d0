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
from tests.graphs import quantized

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
    return quantized(dense, tmp_path)


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


def test_ratio_zero_writes_the_input_graph_as_it_was(tmp_path, capsys):
    """paddle2onnx-style Reshape targets with -1 in Constant nodes: analysis writes the value of
    the -1 into a copy (PP-OCRv5 rec grew by 44 such copies); ratio 0 writes the input's own
    graph, checked by the oracle against the prepared one."""
    made = as_constant_nodes(filled_cnn())
    target = numpy_helper.from_array(np.array([1, -1], np.int64), "flat")
    made.graph.node.append(helper.make_node("Constant", [], ["flat"], value=target))
    made.graph.node.append(helper.make_node("Reshape", ["y", "flat"], ["z"]))
    del made.graph.output[:]
    made.graph.output.append(
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, CHANNELS * 64])
    )
    source, out = tmp_path / "model.onnx", tmp_path / "out.onnx"
    onnx.save(made, source)
    assert main(["prune", str(source), str(out), "--ratio", "0"]) == 0
    assert "PASSED  zero-then-prune oracle on cpu" in capsys.readouterr().out
    written = onnx.load(out)
    assert written.graph.SerializeToString() == onnx.load(source).graph.SerializeToString()
    assert out.stat().st_size <= source.stat().st_size


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


# ---------------------------------------------------------------------------------------------
# No silent no-op: asked to remove, removes nothing -> exit 2, one line, nothing written
# ---------------------------------------------------------------------------------------------


def two_wide() -> onnx.ModelProto:
    """x[2,3] -> MatMul W1[3,2] -> Relu -> MatMul W2[2,4]: one prunable group of 2 units."""
    rng = np.random.default_rng(2)
    return helper_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        {"w1": rng.standard_normal((3, 2)), "w2": rng.standard_normal((2, 4))},
        [2, 3],
        [2, 4],
    )


def one_layer() -> onnx.ModelProto:
    """x @ W -> y: its only channel group is a graph input and a graph output, blocked."""
    rng = np.random.default_rng(3)
    return helper_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        {"w": rng.standard_normal((3, 4))},
        [2, 3],
        [2, 4],
    )


def helper_model(nodes, weights: dict, x_shape: list, y_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    return made


def refused(argv: list[str], out, capsys) -> str:
    """Run the CLI expecting exit 2 with one error line and no output file; the line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphprune: error: ")
    assert not out.exists()
    return lines[0]


def test_a_ratio_that_rounds_to_zero_units_is_refused_with_the_smallest_that_works(
    tmp_path, capsys
):
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(two_wide(), source)
    line = refused(["prune", str(source), str(out), "--ratio", "0.3"], out, capsys)
    assert "--ratio 0.3 removes nothing (scope channels,heads, 1 prunable groups)" in line
    assert "the smallest ratio that removes a unit is 0.5" in line
    # the ratio it names does remove a unit; ratio 0 still reproduces the model
    assert main(["prune", str(source), str(out), "--ratio", "0.5", "--quiet"]) == 0
    out.unlink()
    assert main(["prune", str(source), str(out), "--ratio", "0", "--quiet"]) == 0
    assert out.exists()


def test_every_group_blocked_is_refused_with_the_commonest_reason(tmp_path, capsys):
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(one_layer(), source)
    line = refused(["prune", str(source), str(out), "--ratio", "0.5"], out, capsys)
    # two groups (the input's width, the output's), each blocked by the graph's boundary
    assert "(scope channels,heads, 2 groups): every group is blocked; most often" in line
    assert "is a graph input' (1 of 2)" in line or "is a graph output' (1 of 2)" in line
    heads = refused(
        ["prune", str(source), str(out), "--ratio", "0.5", "--scope", "heads"], out, capsys
    )
    assert "no group in scope among the model's" in heads
    assert main(["prune", str(source), str(out), "--ratio", "0", "--quiet"]) == 0


def test_a_replayed_plan_without_groups_passes_only_when_it_says_ratio_zero(tmp_path, capsys):
    source, out, plan = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "plan.json"
    onnx.save(two_wide(), source)
    argv = ["prune", str(source), str(out), "--ratio", "0", "--plan-out", str(plan), "--quiet"]
    assert main(argv) == 0
    saved = json.loads(plan.read_text())
    assert saved["ratio"] == 0 and saved["groups"] == []
    out.unlink()
    assert main(["prune", str(source), str(out), "--plan", str(plan), "--quiet"]) == 0
    out.unlink()
    plan.write_text(json.dumps(saved | {"ratio": 0.3}))
    line = refused(["prune", str(source), str(out), "--plan", str(plan)], out, capsys)
    assert "the plan removes nothing although it was made at ratio 0.3" in line


def test_expert_ratio_that_removes_no_expert_is_refused(tmp_path, capsys):
    from tests.test_moe import routed_block

    source, out = tmp_path / "moe.onnx", tmp_path / "out.onnx"
    onnx.save(routed_block(), source)  # 4 experts, top-2
    argv = ["prune", str(source), str(out), "--scope", "experts", "--criterion", "l2"]
    line = refused([*argv, "--expert-ratio", "0.2"], out, capsys)
    assert "--expert-ratio 0.2 removes nothing (1 MoE layers, 1 prunable)" in line
    assert "the smallest ratio that removes an expert is 0.25" in line
    assert main([*argv, "--expert-ratio", "0", "--quiet"]) == 0  # the reproduce path


def test_expert_ratio_on_blocked_layers_is_refused_with_the_reason(tmp_path, capsys):
    from tests.test_moe import routed_block

    made = routed_block()
    made.graph.node.append(helper.make_node("Add", ["ids", "k"], ["ids_plus"], name="leak"))
    made.graph.output.append(helper.make_tensor_value_info("ids_plus", TensorProto.INT64, [6, 2]))
    source, out = tmp_path / "moe.onnx", tmp_path / "out.onnx"
    onnx.save(made, source)
    argv = ["prune", str(source), str(out), "--scope", "experts", "--criterion", "l2"]
    line = refused([*argv, "--expert-ratio", "0.5"], out, capsys)
    assert "every layer is blocked; most often" in line and "expert ids reach Add" in line


def test_remove_blocks_without_residual_blocks_is_refused(tmp_path, capsys):
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(two_wide(), source)
    line = refused(["prune", str(source), str(out), "--remove-blocks", "1"], out, capsys)
    assert "--remove-blocks 1 removes nothing: no residual sub-block found" in line


def test_compact_never_points_a_reader_at_a_constant_node_defined_after_it():
    shape = numpy_helper.from_array(np.array([4, 2], np.int64), "target")
    made = helper_model(
        [
            helper.make_node("Reshape", ["x", "target_copy"], ["early"]),  # reads the copy
            helper.make_node("Constant", [], ["target"], value=shape),
            helper.make_node("Reshape", ["early", "target"], ["late"]),
            helper.make_node("MatMul", ["late", "w"], ["y"]),
        ],
        {"w": np.ones((2, 4))},
        [2, 4],
        [4, 4],
    )
    original = frozenset({"target", "w"})
    copy = numpy_helper.from_array(np.array([4, 2], np.int64), "target_copy")
    made.graph.initializer.append(copy)
    compact(made, original)
    assert made.graph.node[0].input[1] == "target_copy"  # "target" only exists later
    onnx.checker.check_model(made)
