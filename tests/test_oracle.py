"""The oracle cannot pass without testing: a wrong rewrite fails at every output scale, dead or
non-finite references are never a pass, and default inputs are the ones the graph asks for
(ids within their tables, masks of ones, dynamic -1 sizes)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphprune.passes.slice_channels import slice_channels
from onnx import TensorProto, helper, numpy_helper

from graphprune.cli import main
from graphprune.errors import BadInput
from graphprune.verify import oracle, random_inputs, run
from tests.graphs import analyze, model, node, weight

REMOVED = {"w1:1": np.array([0, 3, 5, 6, 9, 12])}  # 6 of the 16 hidden units


def mlp(scale: float, shift: float = 0.0, extra_dead_output: bool = False) -> onnx.ModelProto:
    """y = relu((x - shift) @ w1) @ (w2 * scale): a 16-unit hidden group, outputs of the
    order of `scale`; units dead below `shift` (ReLU of x - shift); optionally a second
    output z = x * 0 that is all zero at every input."""
    consts = {
        "shift": np.array(shift, np.float32),
        "w1": weight(8, 16),
        "w2": (weight(16, 4) * scale).astype(np.float32),
    }
    nodes = [
        node("Sub", ["x", "shift"], ["xs"]),
        node("Relu", ["xs"], ["xr"]),
        node("MatMul", ["xr", "w1"], ["h"]),
        node("Relu", ["h"], ["hr"]),
        node("MatMul", ["hr", "w2"], ["y"]),
    ]
    outputs = ["y"]
    if extra_dead_output:
        consts["zero"] = np.array(0.0, np.float32)
        nodes.append(node("Mul", ["x", "zero"], ["z"]))
        outputs.append("z")
    return model(nodes, {"x": (4, 8)}, outputs, consts)


def set_initializer(made: onnx.ModelProto, name: str, change) -> onnx.ModelProto:
    for tensor in made.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)), name))
    return made


def one_column_off(w: np.ndarray) -> np.ndarray:
    w = w.copy()
    w[:, 1] *= 1.01  # one output's weights 1% off: an error of 1% of that output
    return w


def check_at(made: onnx.ModelProto, change=None, removals=REMOVED):
    """The CPU oracle on `made` pruned exactly, or with `change` applied to the pruned w2."""
    work, dep = analyze(made)
    pruned = slice_channels(work, dep, removals)
    if change is not None:
        set_initializer(pruned, "w2", change)
    [check] = oracle(work, pruned, dep, removals, random_inputs(work, 0), ("cpu",))
    return check


@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e4])
def test_the_oracle_fails_a_wrong_rewrite_at_every_output_scale(scale):
    exact = check_at(mlp(scale))
    assert exact.passed and exact.state == "passed", exact.line()
    assert exact.outputs[0].scale == pytest.approx(scale, rel=30)  # the scale really is this
    for wrong in (np.negative, one_column_off):
        check = check_at(mlp(scale), wrong)
        assert not check.passed and check.state == "failed", (wrong, check.line())
        assert check.line().startswith("FAILED")


def test_a_negated_classifier_at_tiny_logits_fails_the_cnn_oracle():
    """The issue's untrained CNN: logits ~1e-7, classifier negated (cosine -1)."""
    from tests.test_cli import small_cnn

    made = set_initializer(small_cnn(), "fc.w", lambda w: w * 1e-8)
    work, dep = analyze(made)
    removals = {"c1.w:0": np.array([0, 1, 2, 3])}
    pruned = set_initializer(slice_channels(work, dep, removals), "fc.w", np.negative)
    [check] = oracle(work, pruned, dep, removals, random_inputs(work, 0), ("cpu",))
    assert not check.passed and check.outputs[0].cosine == pytest.approx(-1.0)
    exact = slice_channels(work, dep, removals)
    assert all(c.passed for c in oracle(work, exact, dep, removals, random_inputs(work, 0)))


def nan_model() -> onnx.ModelProto:
    """y = sqrt(-(h @ w2)^2 - 1): NaN at every input."""
    made = mlp(1.0)
    consts = {"one": np.array(1.0, np.float32)}
    extra = [
        node("Mul", ["y", "y"], ["yy"]),
        node("Neg", ["yy"], ["nyy"]),
        node("Sub", ["nyy", "one"], ["arg"]),
        node("Sqrt", ["arg"], ["out"]),
    ]
    graph = made.graph
    graph.node.extend(extra)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4]))
    return made


def test_a_nan_reference_is_inconclusive_not_passed():
    check = check_at(nan_model())
    assert check.state == "inconclusive" and not check.passed
    assert len(check.inputs_tried) == 5  # the default and every alternative were run
    line = check.line()
    assert line.startswith("INCONCLUSIVE") and "not finite" in line and "--inputs" in line


def test_dead_outputs_at_the_default_inputs_make_the_oracle_try_others_and_judge():
    """ReLU(x - 100): every unit is dead at N(0, 1) inputs, alive at image-like [0, 255)."""
    check = check_at(mlp(1.0, shift=100.0))
    assert check.passed and check.state == "passed", check.line()
    tried = ["N(0,1) floats, seed 0", "U[0,1) floats, seed 1", "U[0,255) floats, seed 2"]
    assert check.inputs_tried == tried  # the first alive set is kept
    assert check.inputs["x"]["how"] == "U[0,255)" and check.inputs["x"]["max"] > 200
    assert "U[0,255)" in check.line()
    wrong = check_at(mlp(1.0, shift=100.0), one_column_off)
    assert not wrong.passed and wrong.state == "failed"


def test_some_outputs_dead_the_alive_ones_are_judged_and_the_dead_reported():
    made = mlp(1.0, extra_dead_output=True)
    check = check_at(made)
    assert check.passed, check.line()
    assert [o.dead for o in check.outputs] == ["", "all zero"]
    assert "not judged: 'z' (all zero)" in check.line()
    assert not check_at(made, np.negative).passed


def test_every_output_dead_is_inconclusive_and_exit_1_in_verify_and_prune(tmp_path, capsys):
    consts = {"zero": np.array(0.0, np.float32), "w1": weight(8, 16), "w2": weight(16, 4)}
    nodes = [
        node("MatMul", ["x", "w1"], ["h"]),
        node("Relu", ["h"], ["hr"]),
        node("MatMul", ["hr", "w2"], ["m"]),
        node("Mul", ["m", "zero"], ["y"]),
    ]
    path = tmp_path / "dead.onnx"
    onnx.save(model(nodes, {"x": (4, 8)}, ["y"], consts), path)
    assert main(["verify", str(path), str(path), "--providers", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and "give real inputs with --inputs" in out
    assert "PASSED" not in out
    target = tmp_path / "pruned.onnx"
    assert main(["prune", str(path), str(target), "--providers", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "INCONCLUSIVE" in out and not target.exists()
    assert "not written: verification inconclusive" in out
    assert main(["prune", str(path), str(target), "--providers", "cpu", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["state"] == "inconclusive" and not document["written"]


def token_model(rows: int = 257, types: int = 2, opset: int = 17) -> onnx.ModelProto:
    """ids -> Gather(table of `rows`) + type ids -> Gather(table of `types`), a mask through
    Where, and position ids through their own table."""
    consts = {
        "emb": weight(rows, 8),
        "types": weight(types, 8),
        "pos": weight(128, 8),
        "w": weight(8, 8),
        "neg": np.array(-1e4, np.float32),
        "zero": np.array(0.0, np.float32),
    }
    nodes = [
        node("Gather", ["emb", "ids"], ["e"]),
        node("Gather", ["types", "token_type_ids"], ["t"]),
        node("Gather", ["pos", "position_ids"], ["p"]),
        node("Add", ["e", "t"], ["et"]),
        node("Add", ["et", "p"], ["s"]),
        node("Cast", ["keep"], ["keep_bool"], to=TensorProto.BOOL),
        node("Where", ["keep_bool", "zero", "neg"], ["bias"]),
        node("Unsqueeze", ["bias", "axes"], ["bias3"]),
        node("Add", ["s", "bias3"], ["sb"]),
        node("MatMul", ["sb", "w"], ["y"]),
    ]
    consts["axes"] = np.array([2], np.int64)
    graph = helper.make_graph(
        nodes,
        "tokens",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
            for name in ("ids", "token_type_ids", "position_ids", "keep")
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 8])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    made.ir_version = 8
    onnx.checker.check_model(made, full_check=True)
    return made


def test_integer_inputs_take_the_values_of_what_they_index():
    made = token_model(rows=257, types=2)
    feeds = random_inputs(made, 0, {"ids": (8, 100)})
    assert feeds["ids"].shape == (8, 100)
    assert feeds["ids"].min() == 0 and feeds["ids"].max() == 256  # bytes over the full range
    assert set(np.unique(feeds["token_type_ids"])) == {0, 1}  # within the 2-row table
    assert (feeds["position_ids"] == np.arange(100)).all()
    assert (feeds["keep"] == 1).all()  # reaches Where through a Cast to bool: a mask of ones
    run(made, feeds)  # every index is valid: onnxruntime does not refuse them
    described = feeds.describe()
    assert described["ids"]["how"] == "ints in [0, 257): rows of Gather table 'emb'"
    assert "ids 8x100 int64 in [0, 256]" in feeds.text()


def test_a_one_hot_input_spans_its_depth():
    consts = {"depth": np.array([257], np.int64), "values": np.array([0, 1], np.float32)}
    nodes = [node("OneHot", ["byte", "depth", "values"], ["y"], axis=-1)]
    graph = helper.make_graph(
        nodes,
        "bytes",
        [helper.make_tensor_value_info("byte", TensorProto.INT32, [4, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 512, 257])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = random_inputs(made)
    assert feeds["byte"].dtype == np.int32
    assert feeds["byte"].min() == 0 and feeds["byte"].max() == 256


def if_model(compare_with_constant: bool) -> onnx.ModelProto:
    """y = If(sr == 16000 or sr itself as the condition) then x * 2 else x * 3."""

    def branch(name: str, factor: float) -> onnx.GraphProto:
        constant = numpy_helper.from_array(np.array(factor, np.float32), f"{name}_k")
        return helper.make_graph(
            [helper.make_node("Mul", ["x", f"{name}_k"], [f"{name}_y"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 4])],
            [constant],
        )

    then, other = branch("then", 2.0), branch("else", 3.0)
    consts = [numpy_helper.from_array(np.array(16000, np.int64), "rate")]
    if compare_with_constant:
        nodes = [helper.make_node("Equal", ["sr", "rate"], ["cond"])]
    else:
        nodes = [helper.make_node("Cast", ["sr"], ["cond"], to=TensorProto.BOOL)]
    nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other))
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        consts,
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    return made


def test_a_scalar_selecting_control_flow_takes_its_compared_constant_or_is_bad_input():
    feeds = random_inputs(if_model(compare_with_constant=True))
    assert feeds["sr"].shape == () and int(feeds["sr"]) == 16000
    with pytest.raises(BadInput, match=r"'sr' selects a control-flow branch.*--inputs"):
        random_inputs(if_model(compare_with_constant=False))


def dynamic_mlp(size: int) -> onnx.ModelProto:
    """`mlp(1)` with its input declared [size, 8]: paddle2onnx writes -1, VAD exports 0."""
    made = mlp(1.0)
    dim = made.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = size
    for output in made.graph.output:
        output.type.tensor_type.shape.dim[0].Clear()
        output.type.tensor_type.shape.dim[0].dim_value = size
    return made


@pytest.mark.parametrize("size", [-1, 0])
def test_minus_one_and_zero_declared_sizes_are_dynamic_in_verify_and_prune(size, tmp_path, capsys):
    made = dynamic_mlp(size)
    assert random_inputs(made)["x"].shape == (1, 8)
    path, target = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(made, path)
    assert main(["verify", str(path), str(path), "--providers", "cpu"]) == 0
    assert "x 1x8 float32" in capsys.readouterr().out
    assert main(["prune", str(path), str(target), "--providers", "cpu", "--ratio", "0.5"]) == 0
    assert target.exists()
    # ratio 0: the sizes are written unknown, which takes no more bytes than the -1 or 0
    assert main(["prune", str(path), str(target), "--providers", "cpu", "--ratio", "0"]) == 0
    assert target.stat().st_size <= path.stat().st_size
    declared = onnx.load(target).graph.input[0].type.tensor_type.shape.dim[0]
    assert not declared.HasField("dim_value") and not declared.dim_param


def test_an_equal_with_0_to_depth_is_a_one_hot_over_the_full_range():
    """jax2tf writes one_hot(bytes, 257) as bytes[..., None] == [0, 1, ..., 256]."""
    consts = {"depths": np.arange(257, dtype=np.int32).reshape(1, 1, 257), "w": weight(257, 4)}
    nodes = [
        node("Unsqueeze", ["bytes", "last"], ["b3"]),
        node("Equal", ["b3", "depths"], ["hot"]),
        node("Cast", ["hot"], ["hotf"], to=TensorProto.FLOAT),
        node("MatMul", ["hotf", "w"], ["y"]),
    ]
    consts["last"] = np.array([2], np.int64)
    graph = helper.make_graph(
        nodes,
        "magika",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, [1, 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2048, 4])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = random_inputs(made)
    assert feeds["bytes"].min() == 0 and feeds["bytes"].max() == 256
    assert "one-hot" in feeds.how["bytes"]


def state_model() -> onnx.ModelProto:
    """y = reshape(state, [2, 4]) @ w: the unnamed axis 1 of state [2, ?, 4] must be 1 (an RNN
    state whose batch axis is not named)."""
    consts = {"flat": np.array([2, 4], np.int64), "w": weight(4, 4)}
    nodes = [node("Reshape", ["state", "flat"], ["s2"]), node("MatMul", ["s2", "w"], ["y"])]
    made = model(nodes, {"state": (2, None, 4)}, {"y": (2, 4)}, consts)
    made.graph.input[0].type.tensor_type.shape.dim[1].Clear()  # unnamed, unknown
    return made


def test_a_set_that_does_not_run_is_passed_over_for_dynamic_sizes_of_1(tmp_path, capsys):
    path = tmp_path / "state.onnx"
    onnx.save(state_model(), path)
    assert random_inputs(state_model())["state"].shape == (2, 64, 4)
    assert main(["verify", str(path), str(path), "--providers", "cpu"]) == 0
    assert "state 2x1x4 float32" in capsys.readouterr().out
    # sizes given that it cannot run at: one line, exit 2, naming --inputs and --shape
    assert main(["verify", str(path), str(path), "--shape", "state:2x3x4"]) == 2
    error = capsys.readouterr().err.strip()
    assert "does not run on cpu" in error and "--inputs" in error and "--shape" in error
    assert len(error.splitlines()) == 1


def test_a_slice_end_stays_within_the_axis_it_cuts():
    consts = {"table": weight(12, 4), "zero": np.array([0], np.int64)}
    nodes = [node("Slice", ["table", "zero", "end"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "slice",
        [helper.make_tensor_value_info("end", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ends = np.concatenate([random_inputs(made, seed)["end"] for seed in range(40)])
    assert ends.min() >= 1 and ends.max() <= 12 and len(set(ends)) > 6


def test_a_model_that_needs_a_long_chunk_is_checked_at_long_float_sizes(tmp_path, capsys):
    """silero VAD: reflect padding of 100 samples on a dynamic-length chunk runs neither at the
    default 64 samples nor at 1: the oracle falls back to 512 and judges there."""
    graph = helper.make_graph(
        [
            node("Pad", ["x", "pads"], ["padded"], mode="reflect"),
            node("Unsqueeze", ["padded", "axis1"], ["u"]),
            node("Conv", ["u", "w1"], ["c1"], strides=[8]),
            node("Relu", ["c1"], ["r"]),
            node("Conv", ["r", "w2"], ["y"]),
        ],
        "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "frames"])],
        [
            numpy_helper.from_array(np.array([0, 100, 0, 100], np.int64), "pads"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(weight(8, 1, 16), "w1"),
            numpy_helper.from_array(weight(4, 8, 1), "w2"),
        ],
    )
    path, target = tmp_path / "vad.onnx", tmp_path / "pruned.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["prune", str(path), str(target), "--providers", "cpu", "--ratio", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "float sizes 512" in out and "x 1x512 float32" in out


def test_a_saturated_sigmoid_output_sends_the_oracle_to_livelier_inputs(tmp_path, capsys):
    """A text detector's probability map at Gaussian inputs sits at ~1e-9 everywhere (PP-OCR
    det: 2e-5): alive, but all but constant. Other input sets are tried first."""
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r"]),
        node("Conv", ["r", "w2", "b2"], ["c2"]),
        node("Sigmoid", ["c2"], ["y"]),
    ]
    rng = np.random.default_rng(5)  # N(0,1) inputs: max 2e-4; N(0,1) x 10: from 0 to 1
    consts = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "w2": rng.standard_normal((1, 8, 1, 1)).astype(np.float32),
        "b2": np.array([-60], np.float32),
    }
    path, target = tmp_path / "det.onnx", tmp_path / "pruned.onnx"
    onnx.save(model(nodes, {"x": (1, 3, 16, 16)}, ["y"], consts), path)
    assert main(["prune", str(path), str(target), "--providers", "cpu", "--ratio", "0.5"]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("PASSED")]
    assert "N(0,1) x 10 floats, seed 3" in line and float(line.split("output scale ")[1][:8]) > 0.5
