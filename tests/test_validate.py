"""Up-front validation: each malformed model is refused with one line naming the file and the
tensor or node, before any session runs; the well-formed variants next to them still load."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune import load as loading
from graphprune.cli import main
from graphprune.errors import BadInput
from graphprune.plan import GroupRemoval, Plan
from tests.graphs import model, node, weight
from tests.test_cli import small_cnn


def tensor(made: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in made.graph.initializer if t.name == name)


def swap_first_nodes(made):
    first, second = onnx.NodeProto(), onnx.NodeProto()
    first.CopyFrom(made.graph.node[0])
    second.CopyFrom(made.graph.node[1])
    made.graph.node[0].CopyFrom(second)
    made.graph.node[1].CopyFrom(first)


def drop_first_node(made):
    del made.graph.node[0]


def no_outputs(made):
    del made.graph.node[1].output[:]


def empty_output(made):
    made.graph.node[1].output[0] = ""


def duplicate_output(made):
    made.graph.node[1].output[0] = "c1"


def dtype_undefined(made):
    tensor(made, "c1.b").data_type = TensorProto.UNDEFINED


def dtype_unknown(made):
    tensor(made, "c1.b").data_type = 99


def dtype_of_same_width(made):
    tensor(made, "c1.b").data_type = TensorProto.INT32  # 4 bytes as float32: sizes agree


def output_type_undefined(made):
    made.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED


def raw_data_short(made):
    tensor(made, "c1.b").raw_data = tensor(made, "c1.b").raw_data[:-4]


def typed_field_short(made):
    bias = tensor(made, "c1.b")
    bias.ClearField("raw_data")
    bias.float_data.extend([0.5] * 7)


def initializer_dim_negative(made):
    tensor(made, "c1.b").dims[0] = -8


def initializer_dim_huge(made):
    tensor(made, "c1.b").dims[0] = 2**40


def input_dim(size, axis=2):
    def mutate(made):
        made.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = size

    return mutate


def input_dims_too_large(made):
    dims = made.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 2**20  # 3 x 2**40 floats: 12 TiB


def sparse_initializer(made):
    values = numpy_helper.from_array(np.ones(2, np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "sp_indices")
    made.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))


def weight_value(name, value):
    def mutate(made):
        array = numpy_helper.to_array(tensor(made, name)).copy()
        array.flat[3] = value
        tensor(made, name).CopyFrom(numpy_helper.from_array(array, name))

    return mutate


def unknown_default_op(made):
    made.graph.node[1].op_type = "NoSuchOp"


REFUSED = {
    "swap_nodes": (swap_first_nodes, "reads 'c1' before node 1 produces it"),
    "drop_node": (drop_first_node, "reads 'c1', which nothing produces"),
    "no_outputs": (no_outputs, "node 1 ('r1', Relu) has no outputs"),
    "empty_output": (empty_output, "node 1 ('r1', Relu) has no outputs"),
    "duplicate_output": (duplicate_output, "produces 'c1', which is already defined"),
    "dtype_undefined": (dtype_undefined, "initializer 'c1.b' has no valid data type (0)"),
    "dtype_unknown": (dtype_unknown, "initializer 'c1.b' has no valid data type (99)"),
    "op_type_mismatch": (dtype_of_same_width, "an op gets a type it does not take: (op_type:Conv"),
    "output_type": (output_type_undefined, "graph output 'y' has no valid type (0)"),
    "raw_data_short": (raw_data_short, "'c1.b' holds 28 bytes of data, its dims [8]"),
    "typed_field_short": (typed_field_short, "'c1.b' holds 7 values, its dims [8]"),
    "dim_negative": (initializer_dim_negative, "'c1.b' has a negative dim -8"),
    "dim_huge": (initializer_dim_huge, "'c1.b' holds 32 bytes of data"),
    "input_dim_negative": (input_dim(-5), "graph input 'x' has dim -5"),
    "input_dim_past_int32": (input_dim(2**31), f"graph input 'x' has dim {2**31}"),
    "input_too_large": (input_dims_too_large, "graph input 'x' would take"),
    "output_contradicts": (
        input_dim(2, axis=0),
        "contradicts the graph: (op_type:MatMul, node name: y): Inferred shape",
    ),
    "sparse": (sparse_initializer, "sparse initializer 'sp' is not supported"),
    "nan_weight": (weight_value("c2.w", np.nan), "initializer 'c2.w' contains NaN"),
    "inf_weight": (weight_value("c2.w", np.inf), "weight initializer 'c2.w' contains an inf"),
    "nan_bias": (weight_value("c1.b", np.nan), "initializer 'c1.b' contains NaN"),
    "checker": (unknown_default_op, "No Op registered for NoSuchOp"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_malformed_model_is_refused_naming_file_and_tensor(case, tmp_path):
    mutate, expected = REFUSED[case]
    made = small_cnn()
    mutate(made)
    path = tmp_path / "m.onnx"
    path.write_bytes(made.SerializeToString())
    with pytest.raises(BadInput) as refused:
        loading.load(path)
    assert str(refused.value).startswith(str(path))
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("size, axis", [(-1, 2), (0, 2), (4096, 2), (-1, 0), (0, 0)])
def test_dynamic_and_large_but_sane_input_dims_load(size, axis, tmp_path):
    """-1 and 0 mean dynamic in paddle2onnx and VAD exports (also against a static declared
    output); the unmodified model loads too, so the refusals above come from the mutation."""
    made = small_cnn()
    input_dim(size, axis)(made)
    path = tmp_path / "m.onnx"
    path.write_bytes(made.SerializeToString())
    assert len(loading.load(path).graph.node) == len(made.graph.node)


def test_inf_outside_weights_is_a_legitimate_mask(tmp_path):
    """-inf added before a Softmax is how exporters mask; only a weight's inf is refused."""
    mask = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    nodes = [
        node("MatMul", ["x", "w"], ["h"]),
        node("Add", ["h", "mask"], ["s"]),
        node("Softmax", ["s"], ["y"]),
    ]
    made = model(nodes, {"x": (4, 4)}, ["y"], {"w": weight(4, 4), "mask": mask})
    path = tmp_path / "masked.onnx"
    onnx.save(made, path)
    assert loading.load(path).graph.node[1].op_type == "Add"
    made.graph.initializer[0].CopyFrom(numpy_helper.from_array(mask, "w"))  # inf as a weight
    onnx.save(made, path)
    with pytest.raises(BadInput, match="weight initializer 'w' contains an infinite value"):
        loading.load(path)


def test_inf_among_other_values_is_a_broken_bias(tmp_path):
    """An added tensor whose finite values are not all zero is a bias, not a mask."""
    bias = weight(4)
    nodes = [node("MatMul", ["x", "w"], ["h"]), node("Add", ["h", "b"], ["y"])]
    made = model(nodes, {"x": (2, 4)}, ["y"], {"w": weight(4, 4), "b": bias})
    path = tmp_path / "bias.onnx"
    onnx.save(made, path)
    assert loading.load(path).graph.initializer[1].name == "b"
    bias[2] = -np.inf
    made.graph.initializer[1].CopyFrom(numpy_helper.from_array(bias, "b"))
    onnx.save(made, path)
    with pytest.raises(BadInput, match="weight initializer 'b' contains an infinite value"):
        loading.load(path)


def test_non_utf8_name_is_refused_with_its_place(tmp_path):
    data = small_cnn().SerializeToString()
    assert data.count(b"r2") > 0
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"r2", b"r\xff"))
    with pytest.raises(BadInput, match=r"graph\.node\[3\]\.output\[0\] is not valid UTF-8"):
        loading.load(path)


def bfloat16_tensor(values: np.ndarray, name: str) -> onnx.TensorProto:
    bits = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    return helper.make_tensor(name, TensorProto.BFLOAT16, values.shape, bits.tobytes(), raw=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_bfloat16_weights_are_scanned_bitwise(bad, tmp_path):
    values = np.ones((4, 4), np.float32)
    nodes = [
        node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
        node("MatMul", ["xb", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4, 4])],
        [bfloat16_tensor(values, "w")],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bf16.onnx"
    onnx.save(made, path)
    assert loading.load(path).graph.initializer[0].name == "w"
    values[1, 2] = bad
    made.graph.initializer[0].CopyFrom(bfloat16_tensor(values, "w"))
    onnx.save(made, path)
    with pytest.raises(BadInput, match="initializer 'w' contains"):
        loading.load(path)


def external_model(tmp_path, **entries) -> onnx.ModelProto:
    """small_cnn saved with every weight in `m.onnx.data`, with `entries` overriding those of
    `c2.w` (offset or length) after saving."""
    path = tmp_path / "m.onnx"
    onnx.save(
        small_cnn(), path, save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    made = onnx.load(str(path), load_external_data=False)
    for entry in tensor(made, "c2.w").external_data:
        if entry.key in entries:
            entry.value = entries.pop(entry.key)
    for key, value in entries.items():
        tensor(made, "c2.w").external_data.add(key=key, value=value)
    path.write_bytes(made.SerializeToString())
    return made


C2_BYTES = 8 * 8 * 3 * 3 * 4

EXTERNAL_REFUSED = {
    "negative_offset": ({"offset": "-4"}, "offset of initializer 'c2.w' is '-4', not a non-neg"),
    "text_offset": ({"offset": "abc"}, "offset of initializer 'c2.w' is 'abc'"),
    "fractional_length": ({"length": "1.5"}, "length of initializer 'c2.w' is '1.5'"),
    "short_length": ({"length": "16"}, "'c2.w' is 16 bytes long, its dims [8, 8, 3, 3]"),
    "past_end": ({"offset": "100000"}, "ends at byte 102304, past the end of m.onnx.data"),
    "outside": ({"location": "../m.onnx.data"}, "points outside the model's folder"),
    "missing": ({"location": "other.data"}, "external data file missing"),
    "folder": ({"location": "."}, "is not a regular file: '.'"),
    "trailing_slash": ({"location": "m.onnx.data/"}, "is not a regular file: 'm.onnx.data/'"),
    "nul": ({"location": "m.onnx\x00data"}, "cannot be used: 'm.onnx\\x00data' (embedded null"),
    "too_long": ({"location": "x" * 5000}, "(File name too long)"),
}


@pytest.mark.parametrize("case", EXTERNAL_REFUSED)
def test_bad_external_data_entry_is_refused(case, tmp_path):
    entries, expected = EXTERNAL_REFUSED[case]
    assert C2_BYTES == 2304
    external_model(tmp_path, **entries)
    with pytest.raises(BadInput, match=re.escape(expected)):
        loading.load(tmp_path / "m.onnx")


def test_external_data_without_entries_changed_loads(tmp_path):
    external_model(tmp_path)
    loaded = loading.load(tmp_path / "m.onnx")
    assert math.prod(tensor(loaded, "c2.w").dims) == 8 * 8 * 3 * 3
    assert len(tensor(loaded, "c2.w").raw_data) == C2_BYTES


def test_nan_in_external_weight_is_found_after_loading(tmp_path):
    external_model(tmp_path)
    data = tmp_path / "m.onnx.data"
    made = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    offset = int(dict((e.key, e.value) for e in tensor(made, "c2.w").external_data)["offset"])
    raw = bytearray(data.read_bytes())
    raw[offset + 8 : offset + 12] = np.float32(np.nan).tobytes()
    data.write_bytes(bytes(raw))
    with pytest.raises(BadInput, match=re.escape("initializer 'c2.w' contains NaN")):
        loading.load(tmp_path / "m.onnx")


def test_cli_refuses_in_one_line_with_exit_2(tmp_path, capsys):
    made = small_cnn()
    weight_value("c2.w", np.nan)(made)
    path = tmp_path / "nan.onnx"
    onnx.save(made, path)
    assert main(["prune", str(path), str(tmp_path / "out.onnx"), "--providers", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"graphprune: error: {path}: initializer 'c2.w' contains NaN; "
        "a model with NaN weights cannot be pruned"
    ]
    assert not (tmp_path / "out.onnx").exists()


# -- plans ------------------------------------------------------------------------------------


def plan_document() -> dict:
    return asdict(Plan("0123abcd", "l2", 0.3, "uniform", [GroupRemoval("c1:1", 8, [0, 3])]))


def with_removed(indices):
    def mutate(document):
        document["groups"][0]["removed"] = indices

    return mutate


def with_field(name, value, group: bool = False):
    def mutate(document):
        (document["groups"][0] if group else document)[name] = value

    return mutate


def without_field(name):
    def mutate(document):
        del document[name]

    return mutate


PLAN_REFUSED = {
    "fraction": (with_removed([0, 0.5]), "groups[0].removed[1] is 0.5, expected a non-negative"),
    "bool": (with_removed([True]), "groups[0].removed[0] is true"),
    "negative": (with_removed([-1]), "groups[0].removed[0] is -1"),
    "string": (with_removed(["3"]), 'groups[0].removed[0] is "3"'),
    "duplicate": (with_removed([3, 1, 3]), "groups[0].removed lists index 3 more than once"),
    "nested": (with_removed([[1]]), "groups[0].removed[0] is [1]"),
    "format": (with_field("format", "graphprune.plan/0"), "format is 'graphprune.plan/0'"),
    "missing": (without_field("groups"), "the plan has no field 'groups'"),
    "unknown": (with_field("extra", 1), "the plan has an unknown field 'extra'"),
    "ratio_text": (with_field("ratio", "0.3"), "'ratio' is a string, expected a number"),
    "ratio_nan": (with_field("ratio", float("nan")), "ratio is nan, expected a finite number"),
    "units_bool": (with_field("units", True, group=True), "'units' is a boolean"),
    "units_zero": (with_field("units", 0, group=True), "groups[0].units is 0"),
    "groups_object": (with_field("groups", {}), "'groups' is an object, expected a list"),
}


def test_saved_plan_reads_back_equal(tmp_path):
    plan = Plan(**{**plan_document(), "groups": [GroupRemoval("c1:1", 8, [0, 3])]})
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan


@pytest.mark.parametrize("case", PLAN_REFUSED)
def test_malformed_plan_is_refused_naming_the_field(case, tmp_path):
    mutate, expected = PLAN_REFUSED[case]
    document = plan_document()
    mutate(document)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    with pytest.raises(BadInput) as refused:
        Plan.load(path)
    assert expected in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"format": ', "is not JSON (Expecting value at line 1)"),
        ("[1]", "the plan is a list, expected an object"),
        ("1" * 5000, "is not a graphprune plan (Exceeds the limit"),
    ],
)
def test_plan_that_is_not_a_plan_object_is_refused(text, expected, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(BadInput, match=re.escape(expected)):
        Plan.load(path)


def test_plan_not_utf8_or_a_folder_is_refused(tmp_path):
    (tmp_path / "plan.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(BadInput, match="cannot read plan"):
        Plan.load(tmp_path / "plan.json")
    with pytest.raises(BadInput, match="cannot read plan"):
        Plan.load(tmp_path)


def test_cli_refuses_a_fractional_plan_index_in_one_line(tmp_path, capsys):
    cnn_path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), cnn_path)
    document = plan_document()
    document["groups"][0]["removed"] = [0.5]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(document))
    out = tmp_path / "out.onnx"
    assert main(["prune", str(cnn_path), str(out), "--plan", str(plan)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "groups[0].removed[0] is 0.5" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["fifo", "link_loop"])
def test_external_data_that_is_no_regular_file_is_refused(kind, tmp_path):
    external_model(tmp_path, location="odd")
    if kind == "fifo":
        os.mkfifo(tmp_path / "odd")  # reading it would block forever
    else:
        os.symlink("odd", tmp_path / "odd")
    with pytest.raises(BadInput, match=re.escape("initializer 'c2.w'")):
        loading.load(tmp_path / "m.onnx")


@pytest.mark.parametrize(
    "name, expected",
    [("folder", "is not a regular file"), ("fifo", "is not a regular file"), ("nul", "no such")],
)
def test_model_path_that_is_no_regular_file_is_refused(name, expected, tmp_path):
    path = {"folder": tmp_path, "fifo": tmp_path / "m.onnx", "nul": tmp_path / "m\x00.onnx"}[name]
    if name == "fifo":
        os.mkfifo(path)  # reading it would block forever
    with pytest.raises(BadInput, match=expected):
        loading.load(path)
