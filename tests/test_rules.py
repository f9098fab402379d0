"""One small handcrafted graph per op rule: exact group membership, then the oracle.

Every test names the spaces it expects in a group, so a rule that links too much or too little
fails here before it fails on a zoo model.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from graphprune.ops import Role, Space
from tests.graphs import (
    analyze,
    group_with,
    initializer,
    ints,
    members,
    model,
    node,
    positive,
    prune_at_ratio,
    prune_every_group,
    weight,
)

X = {"x": (1, 3, 8, 8)}


def conv_block(x: str, name: str, c_in: int, c_out: int, k: int = 1, **attrs):
    """Conv with weight `{name}.w` and bias `{name}.b`, output `name`."""
    pads = [k // 2] * 4
    constants = {
        f"{name}.w": weight(c_out, c_in // attrs.get("group", 1), k, k),
        f"{name}.b": weight(c_out),
    }
    n = node("Conv", [x, f"{name}.w", f"{name}.b"], [name], pads=pads, **attrs)
    return [n], constants


def chain(*blocks):
    nodes, constants = [], {}
    for block_nodes, block_constants in blocks:
        nodes += block_nodes
        constants |= block_constants
    return nodes, constants


def test_conv_relu_conv_group_is_exactly_producer_activation_and_reader():
    nodes, consts = chain(
        conv_block("x", "c1", 3, 6, 3),
        ([node("Relu", ["c1"], ["r"])], {}),
        conv_block("r", "c2", 6, 4),
    )
    made = model(nodes, X, ["c2"], consts)
    _work, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert members(group) == {("c1.w", 0), ("c1.b", 0), ("c1", 1), ("r", 1), ("c2.w", 1)}
    assert group.roles == {
        Space("c1.w", 0): Role.OUT,
        Space("c1.b", 0): Role.OUT,
        Space("c2.w", 1): Role.IN,
    }
    assert group.n_units == 6 and group.prunable
    assert not group_with(dep, "c2.w", 0).prunable  # reaches the graph output
    assert not group_with(dep, "c1.w", 1).prunable  # reads the graph input
    pruned, _, _ = prune_every_group(made)
    assert initializer(pruned, "c2.w").shape == (4, 3, 1, 1)


def test_depthwise_conv_couples_input_and_output_and_rewrites_group():
    nodes, consts = chain(
        conv_block("x", "c1", 3, 8),
        conv_block("c1", "dw", 8, 8, 3, group=8),
        conv_block("dw", "c2", 8, 4),
    )
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert members(group) == {
        ("c1.w", 0),
        ("c1.b", 0),
        ("c1", 1),
        ("dw.w", 0),
        ("dw.b", 0),
        ("dw", 1),
        ("c2.w", 1),
    }
    pruned, _, _ = prune_every_group(made)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 4


def test_depthwise_multiplier_keeps_blocks_of_outputs_per_input():
    nodes, consts = chain(
        conv_block("x", "c1", 3, 4),
        conv_block("c1", "dw", 4, 8, 3, group=4),
        conv_block("dw", "c2", 8, 4),
    )
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert group.n_units == 4
    np.testing.assert_array_equal(group.labels[Space("dw", 1)], [0, 0, 1, 1, 2, 2, 3, 3])
    prune_every_group(made)


def test_grouped_conv_couples_local_indices_across_groups():
    nodes, consts = chain(
        conv_block("x", "c1", 3, 8),
        conv_block("c1", "g", 8, 8, 3, group=2),
        conv_block("g", "c2", 8, 4),
    )
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    into = group_with(dep, "c1.w", 0)
    # 4 channels per group: channel i and i + 4 are the same local index
    np.testing.assert_array_equal(into.labels[Space("c1", 1)], [0, 1, 2, 3, 0, 1, 2, 3])
    out = group_with(dep, "g.w", 0)
    assert out.n_units == 4 and members(out) >= {("g.w", 0), ("g", 1), ("c2.w", 1)}
    pruned, _, _ = prune_every_group(made)
    assert initializer(pruned, "g.w").shape == (4, 2, 3, 3)


def test_conv_transpose_reads_axis_0_and_produces_axis_1():
    consts = {
        "c1.w": weight(6, 3, 1, 1),
        "ct.w": weight(6, 5, 2, 2),
        "ct.b": weight(5),
        "c2.w": weight(4, 5, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "c1.w"], ["c1"]),
        node("ConvTranspose", ["c1", "ct.w", "ct.b"], ["ct"], strides=[2, 2]),
        node("Conv", ["ct", "c2.w"], ["c2"]),
    ]
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    assert members(group_with(dep, "c1.w", 0)) == {("c1.w", 0), ("c1", 1), ("ct.w", 0)}
    assert members(group_with(dep, "ct.w", 1)) == {("ct.w", 1), ("ct.b", 0), ("ct", 1), ("c2.w", 1)}
    prune_every_group(made)


def test_gemm_and_flatten_after_global_pool():
    consts = {
        "c.w": weight(6, 3, 3, 3),
        "g1.w": weight(10, 6),
        "g1.b": weight(10),
        "g2.w": weight(10, 4),
        "g2.b": weight(4),
    }
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("GlobalAveragePool", ["c"], ["p"]),
        node("Flatten", ["p"], ["f"]),
        node("Gemm", ["f", "g1.w", "g1.b"], ["g1"], transB=1),
        node("Relu", ["g1"], ["r"]),
        node("Gemm", ["r", "g2.w", "g2.b"], ["g2"]),
    ]
    made = model(nodes, X, ["g2"], consts)
    _, dep = analyze(made)
    assert members(group_with(dep, "c.w", 0)) == {
        ("c.w", 0),
        ("c", 1),
        ("p", 1),
        ("f", 1),
        ("g1.w", 1),
    }
    assert members(group_with(dep, "g1.w", 0)) == {
        ("g1.w", 0),
        ("g1.b", 0),
        ("g1", 1),
        ("r", 1),
        ("g2.w", 0),
    }
    prune_every_group(made)


def test_flatten_of_spatial_map_gives_each_channel_a_block_of_features():
    consts = {"c.w": weight(4, 3, 3, 3), "g.w": weight(4 * 4, 5)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
        node("Flatten", ["c"], ["f"]),
        node("MatMul", ["f", "g.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    np.testing.assert_array_equal(group.labels[Space("g.w", 0)], np.repeat(np.arange(4), 4))
    pruned, _, _ = prune_every_group(made)
    assert initializer(pruned, "g.w").shape == (8, 5)


def test_matmul_with_constant_weight_and_bias_add():
    seq = {"x": (2, 5, 8)}
    consts = {"w1": weight(8, 12), "b1": weight(12), "w2": weight(12, 8)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m1"]),
        node("Add", ["m1", "b1"], ["a1"]),
        node("Relu", ["a1"], ["r"]),
        node("MatMul", ["r", "w2"], ["y"]),
    ]
    made = model(nodes, seq, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "w1", 1)
    assert members(group) == {("w1", 1), ("m1", 2), ("b1", 0), ("a1", 2), ("r", 2), ("w2", 0)}
    assert group.roles[Space("w2", 0)] == Role.IN
    prune_every_group(made)


def test_batch_norm_parameters_follow_the_channel_and_statistics_are_not_scored():
    consts = {
        "c.w": weight(6, 3, 1, 1),
        "s": positive(6),
        "b": weight(6),
        "m": weight(6),
        "v": positive(6),
        "c2.w": weight(2, 6, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
        node("Relu", ["bn"], ["r"]),
        node("Conv", ["r", "c2.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert {s.tensor: r for s, r in group.roles.items()} == {
        "c.w": Role.OUT,
        "s": Role.OUT,
        "b": Role.OUT,
        "m": Role.STAT,
        "v": Role.STAT,
        "c2.w": Role.IN,
    }
    prune_every_group(made)


def test_instance_norm_is_per_channel():
    consts = {
        "c.w": weight(6, 3, 1, 1),
        "s": positive(6),
        "b": weight(6),
        "c2.w": weight(2, 6, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("InstanceNormalization", ["c", "s", "b"], ["n"]),
        node("Conv", ["n", "c2.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    assert ("s", 0) in members(group_with(dep, "c.w", 0))
    prune_every_group(made)


def test_group_norm_removes_whole_groups_and_rewrites_num_groups():
    groups = 4
    consts = {
        "c.w": weight(8, 3, 1, 1),
        "s": positive(8),
        "b": weight(8),
        "c2.w": weight(2, 8, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("GroupNormalization", ["c", "s", "b"], ["n"], num_groups=groups),
        node("Conv", ["n", "c2.w"], ["y"]),
    ]
    made = model(nodes, X, {"y": (1, 2, 8, 8)}, consts, opset=21)
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert group.n_units == groups
    np.testing.assert_array_equal(group.labels[Space("c", 1)], [0, 0, 1, 1, 2, 2, 3, 3])
    pruned, _, _ = prune_every_group(made)
    norm = next(n for n in pruned.graph.node if n.op_type == "GroupNormalization")
    assert next(a.i for a in norm.attribute if a.name == "num_groups") == 2


UNARY = [
    ("Relu", {}),
    ("LeakyRelu", {"alpha": 0.1}),
    ("Sigmoid", {}),
    ("HardSigmoid", {}),
    ("HardSwish", {}),
    ("Tanh", {}),
    ("Erf", {}),
    ("Identity", {}),
    ("Dropout", {}),
    ("Elu", {}),
    ("Softplus", {}),
    ("Abs", {}),
]


@pytest.mark.parametrize(("op", "attrs"), UNARY, ids=[u[0] for u in UNARY])
def test_unary_elementwise_passes_channels_through(op, attrs):
    nodes, consts = chain(
        conv_block("x", "c1", 3, 6),
        ([node(op, ["c1"], ["u"], **attrs)], {}),
        conv_block("u", "c2", 6, 4),
    )
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    assert ("u", 1) in members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_clip_and_cast_pass_channels_through():
    consts = {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes, more = chain(conv_block("x", "c1", 3, 6), conv_block("k", "c2", 6, 4))
    nodes.insert(1, node("Clip", ["c1", "lo", "hi"], ["clip"]))
    nodes.insert(2, node("Cast", ["clip"], ["k"], to=1))
    made = model(nodes, X, ["c2"], consts | more)
    _, dep = analyze(made)
    assert {("clip", 1), ("k", 1)} <= members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_prelu_slope_per_channel_is_a_parameter_of_the_channel():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("p", "c2", 6, 4))
    nodes.insert(1, node("PRelu", ["c1", "slope"], ["p"]))
    made = model(nodes, X, ["c2"], consts | {"slope": weight(6, 1, 1)})
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert group.roles[Space("slope", 0)] == Role.OUT
    prune_every_group(made)


def test_residual_add_couples_both_branches():
    nodes, consts = chain(
        conv_block("x", "a", 3, 6),
        conv_block("x", "b", 3, 6),
        ([node("Add", ["a", "b"], ["s"])], {}),
        conv_block("s", "c", 6, 4),
    )
    made = model(nodes, X, ["c"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "a.w", 0)
    assert members(group) == {
        ("a.w", 0),
        ("a.b", 0),
        ("a", 1),
        ("b.w", 0),
        ("b.b", 0),
        ("b", 1),
        ("s", 1),
        ("c.w", 1),
    }
    prune_every_group(made)


def test_per_channel_scale_and_bias_constants_broadcast():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("a", "c2", 6, 4))
    nodes[1:1] = [node("Mul", ["c1", "scale"], ["m"]), node("Add", ["m", "shift"], ["a"])]
    made = model(nodes, X, ["c2"], consts | {"scale": weight(6, 1, 1), "shift": weight(1, 6, 1, 1)})
    _, dep = analyze(made)
    assert {("scale", 0), ("shift", 1)} <= members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_squeeze_excitation_gate_joins_the_gated_channels():
    nodes, consts = chain(
        conv_block("x", "c1", 3, 8),
        conv_block("gap", "se1", 8, 2),
        conv_block("se_r", "se2", 2, 8),
        conv_block("gated", "c2", 8, 4),
    )
    nodes[1:1] = [node("GlobalAveragePool", ["c1"], ["gap"])]
    nodes.insert(3, node("Relu", ["se1"], ["se_r"]))
    nodes[5:5] = [node("Sigmoid", ["se2"], ["gate"]), node("Mul", ["c1", "gate"], ["gated"])]
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert {("se1.w", 1), ("se2.w", 0), ("gate", 1), ("gated", 1), ("c2.w", 1)} <= members(group)
    assert members(group_with(dep, "se1.w", 0)) == {
        ("se1.w", 0),
        ("se1.b", 0),
        ("se1", 1),
        ("se_r", 1),
        ("se2.w", 1),
    }
    prune_every_group(made)


def test_silu_and_erf_gelu_decompositions_are_elementwise():
    consts = {
        "sqrt2": np.array(1.4142135, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
    }
    nodes, more = chain(conv_block("x", "c1", 3, 6), conv_block("gelu", "c2", 6, 4))
    nodes[1:1] = [
        node("Sigmoid", ["c1"], ["sig"]),
        node("Mul", ["c1", "sig"], ["silu"]),
        node("Div", ["silu", "sqrt2"], ["d"]),
        node("Erf", ["d"], ["e"]),
        node("Add", ["e", "one"], ["e1"]),
        node("Mul", ["silu", "e1"], ["g0"]),
        node("Mul", ["g0", "half"], ["gelu"]),
    ]
    made = model(nodes, X, ["c2"], consts | more)
    _, dep = analyze(made)
    assert {("silu", 1), ("e", 1), ("gelu", 1)} <= members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_concat_maps_each_input_to_its_offset():
    nodes, consts = chain(
        conv_block("x", "a", 3, 4),
        conv_block("x", "b", 3, 6),
        ([node("Concat", ["a", "b"], ["cat"], axis=1)], {}),
        conv_block("cat", "c", 10, 4),
    )
    made = model(nodes, X, ["c"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "a.w", 0)
    assert group is group_with(dep, "b.w", 0) and group.n_units == 10
    np.testing.assert_array_equal(group.labels[Space("cat", 1)][:4], group.labels[Space("a", 1)])
    np.testing.assert_array_equal(group.labels[Space("cat", 1)][4:], group.labels[Space("b", 1)])
    prune_every_group(made)


def split_paths_model():
    """Conv -> Split [3, 3] -> (Relu | Conv) -> Concat -> Conv: the concat holds c1's first
    three channels and c2's three, c1 holds its own six; no space holds all nine units."""
    nodes, consts = chain(
        conv_block("x", "c1", 3, 6),
        ([node("Split", ["c1", "sizes"], ["a", "b"], axis=1)], {"sizes": ints(3, 3)}),
        ([node("Relu", ["a"], ["ar"])], {}),
        conv_block("b", "c2", 3, 3),
        ([node("Concat", ["ar", "c2"], ["cat"], axis=1)], {}),
        conv_block("cat", "c3", 6, 4),
    )
    return model(nodes, X, ["c3"], consts)


def test_units_of_a_group_are_the_union_over_every_space():
    _, dep = analyze(split_paths_model())
    group = group_with(dep, "c1.w", 0)
    assert group is group_with(dep, "c2.w", 0)
    assert group.n_units == 9
    assert all(len(np.unique(labels)) < 9 for labels in group.labels.values())
    np.testing.assert_array_equal(
        group.labels[Space("cat", 1)],
        np.concatenate([group.labels[Space("c1", 1)][:3], group.labels[Space("c2", 1)]]),
    )
    # a plan names the units its anchor lacks after the anchor's indices, and replays them
    units = np.arange(9)
    indices = group.first_anchor_index(units)
    assert len(set(indices.tolist())) == 9 and indices.max() < group.plan_index_count
    np.testing.assert_array_equal(group.anchor_units(indices), units)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7])
def test_split_pieces_on_different_paths_prune_exactly(ratio):
    _, _, removals = prune_at_ratio(split_paths_model(), ratio)
    removed = sum(len(units) for units in removals.values())
    # floor(ratio * 9), less a unit spared where the lowest-scoring ones would empty a piece
    assert int(ratio * 9) - 2 <= removed <= int(ratio * 9) and (removed > 0) == (ratio > 0)


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_a_one_channel_concat_input_keeps_its_channel_and_the_gemm_width_follows(ratio):
    nodes, consts = chain(
        conv_block("x", "a", 3, 4),
        conv_block("x", "b", 3, 1),
        ([node("Concat", ["a", "b"], ["cat"], axis=1), node("Flatten", ["cat"], ["flat"])], {}),
    )
    consts |= {"fc.w": weight(5 * 64, 3), "fc.b": weight(3)}
    nodes.append(node("Gemm", ["flat", "fc.w", "fc.b"], ["fc"]))
    made = model(nodes, X, ["fc"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "a.w", 0)
    assert group.sizes[Space("b", 1)] == 1 and group.prunable
    pruned, _, removals = prune_at_ratio(made, ratio)
    units = removals.get(group.id, [])
    assert group.labels[Space("b", 1)][0] not in units  # the 1-wide input is never emptied
    assert initializer(pruned, "fc.w").shape == ((5 - len(units)) * 64, 3)


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_split_and_concat_pieces_of_width_one(ratio):
    nodes, consts = chain(
        conv_block("x", "c1", 3, 6),
        ([node("Split", ["c1", "sizes"], ["a", "b"], axis=1)], {"sizes": ints(1, 5)}),
        conv_block("a", "ca", 1, 2),
        conv_block("b", "cb", 5, 2),
        ([node("Concat", ["ca", "cb", "a"], ["cat"], axis=1)], {}),
        conv_block("cat", "c3", 5, 4),
    )
    made = model(nodes, X, ["c3"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert {("a", 1), ("cb.w", 1)} <= members(group) and group.prunable
    pruned, _, _ = prune_at_ratio(made, ratio)
    assert initializer(pruned, "ca.w").shape[1] == 1


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_on_channels_rewrites_split_sizes(opset):
    nodes, consts = chain(
        conv_block("x", "c1", 3, 8), conv_block("s0", "a", 3, 2), conv_block("s1", "b", 5, 2)
    )
    if opset >= 13:
        split = node("Split", ["c1", "sizes"], ["s0", "s1"], axis=1)
        consts["sizes"] = ints(3, 5)
    else:
        split = node("Split", ["c1"], ["s0", "s1"], axis=1, split=[3, 5])
    nodes.insert(1, split)
    made = model(nodes, X, ["a", "b"], consts, opset=opset)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert {("s0", 1), ("s1", 1), ("a.w", 1), ("b.w", 1)} <= members(group)
    prune_every_group(made)


def test_slice_on_channels_shifts_bounds():
    nodes, consts = chain(conv_block("x", "c1", 3, 8), conv_block("sl", "c2", 4, 2))
    nodes.insert(1, node("Slice", ["c1", "st", "en", "ax"], ["sl"]))
    made = model(nodes, X, ["c2"], consts | {"st": ints(2), "en": ints(6), "ax": ints(1)})
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    np.testing.assert_array_equal(group.labels[Space("sl", 1)], group.labels[Space("c1", 1)][2:6])
    prune_every_group(made)


def test_pad_passes_channels_unless_it_pads_them():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("p", "c2", 6, 4))
    nodes.insert(1, node("Pad", ["c1", "pads"], ["p"]))
    made = model(nodes, X, ["c2"], consts | {"pads": ints(0, 0, 1, 1, 0, 0, 1, 1)})
    _, dep = analyze(made)
    assert group_with(dep, "c1.w", 0).prunable
    prune_every_group(made)
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("p", "c2", 7, 4))
    nodes.insert(1, node("Pad", ["c1", "pads"], ["p"]))
    made = model(nodes, X, ["c2"], consts | {"pads": ints(0, 1, 0, 0, 0, 0, 0, 0)})
    _, dep = analyze(made)
    blocked = group_with(dep, "c1.w", 0)
    assert not blocked.prunable and any("Pad pads this axis" in r for r in blocked.blocked)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"])
def test_pooling_passes_channels(op):
    attrs = {"kernel_shape": [2, 2]} if not op.startswith("Global") else {}
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("p", "c2", 6, 4))
    nodes.insert(1, node(op, ["c1"], ["p"], **attrs))
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    assert ("p", 1) in members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_resize_with_scales_passes_channels():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("up", "c2", 6, 4))
    nodes.insert(1, node("Resize", ["c1", "", "scales"], ["up"], mode="nearest"))
    made = model(nodes, X, ["c2"], consts | {"scales": np.array([1, 1, 2, 2], np.float32)})
    _, dep = analyze(made)
    assert ("up", 1) in members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_resize_with_sizes_rewrites_the_channel_entry():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("up", "c2", 6, 4))
    nodes.insert(1, node("Resize", ["c1", "", "", "sizes"], ["up"], mode="nearest"))
    made = model(nodes, X, ["c2"], consts | {"sizes": ints(1, 6, 16, 16)})
    _, dep = analyze(made)
    assert ("up", 1) in members(group_with(dep, "c1.w", 0))
    prune_every_group(made)


def test_transpose_to_channels_last_and_matmul():
    consts = {"c.w": weight(6, 3, 1, 1), "w": weight(6, 5)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        node("MatMul", ["t", "w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    assert members(group_with(dep, "c.w", 0)) == {("c.w", 0), ("c", 1), ("t", 3), ("w", 0)}
    prune_every_group(made)


@pytest.mark.parametrize("flatten", ["Reshape", "Flatten"])
def test_channels_last_flatten_carries_the_channel_not_a_spatial_axis(flatten):
    """Keras/tf2onnx: Conv between Transposes, bias on the last axis, Flatten of [N, H, W, C]:
    channel c is every merged index k with k % C == c; H and W never form a group."""
    consts = {"c.w": weight(6, 3, 3, 3), "c.b": weight(6), "fc.w": weight(8 * 8 * 6, 4)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"], pads=[1, 1, 1, 1]),
        node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
        node("Add", ["t", "c.b"], ["biased"]),
        node("Relu", ["biased"], ["r"]),
    ]
    if flatten == "Reshape":
        consts["shape"] = ints(1, -1)
        nodes.append(node("Reshape", ["r", "shape"], ["flat"]))
    else:
        nodes.append(node("Flatten", ["r"], ["flat"]))
    nodes.append(node("MatMul", ["flat", "fc.w"], ["y"]))
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert group.prunable and group.n_units == 6
    np.testing.assert_array_equal(group.labels[Space("fc.w", 0)], np.tile(np.arange(6), 64))
    assert not any(Space("r", axis) in g.sizes for g in dep.groups for axis in (1, 2))
    pruned, _, removals = prune_at_ratio(made, 0.5)
    assert initializer(pruned, "fc.w").shape == (8 * 8 * 3, 4) and len(removals[group.id]) == 3


def test_weights_listed_as_graph_inputs_declare_their_pruned_shapes():
    """torch's keep_initializers_as_inputs: every weight is also a graph input."""
    nodes, consts = chain(
        conv_block("x", "c1", 3, 6),
        ([node("Relu", ["c1"], ["r"])], {}),
        conv_block("r", "c2", 6, 4),
    )
    made = model(nodes, X, ["c2"], consts)
    for tensor in made.graph.initializer:
        made.graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
        )
    pruned, _, _ = prune_at_ratio(made, 0.5)  # runs the full checker on the pruned model
    declared = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in pruned.graph.input
    }
    assert declared.pop("x") == [1, 3, 8, 8]
    assert declared == {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert declared["c1.w"] == [3, 3, 1, 1] and declared["c2.w"] == [4, 3, 1, 1]


@pytest.mark.parametrize(("reader", "fixed_axis"), [("Conv", 1), ("Gemm", 1), ("MatMul", 1)])
def test_a_symbolic_input_size_a_weight_fixes_is_declared_from_the_weight(reader, fixed_axis):
    """[N, C, H, W] all symbolic: C can only be what the weight reads (not a default of 64)."""
    if reader == "Conv":
        nodes, consts = chain(conv_block("x", "c1", 3, 6, 3), conv_block("c1", "c2", 6, 4))
        inputs, output = {"x": ("N", "C", "H", "W")}, "c2"
    else:
        consts = {"w1": weight(5, 6), "w2": weight(6, 4)}
        nodes = [node(reader, ["x", "w1"], ["h"]), node(reader, ["h", "w2"], ["y"])]
        inputs, output = {"x": ("N", "K")}, "y"
    made = model(nodes, inputs, [output], consts)
    work, _ = analyze(made)
    (declared,) = [v for v in work.graph.input if v.name == "x"]
    dims = declared.type.tensor_type.shape.dim
    assert dims[fixed_axis].dim_value == (3 if reader == "Conv" else 5)
    assert dims[0].dim_param == "N"  # the batch stays symbolic
    prune_at_ratio(made, 0.5)


def test_reshape_after_global_pool_with_constant_target():
    consts = {"c.w": weight(6, 3, 3, 3), "shape": ints(1, 6), "g.w": weight(6, 4)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("GlobalAveragePool", ["c"], ["p"]),
        node("Reshape", ["p", "shape"], ["f"]),
        node("MatMul", ["f", "g.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    assert ("f", 1) in members(group_with(dep, "c.w", 0))
    pruned, _, _ = prune_every_group(made)
    targets = [n.input[1] for n in pruned.graph.node if n.op_type == "Reshape"]
    assert initializer(pruned, targets[0]).tolist() == [1, 3]


def test_channel_shuffle_couples_the_channels_that_become_neighbours():
    groups, per_group = 2, 4
    consts = {
        "c1.w": weight(8, 3, 1, 1),
        "c2.w": weight(4, 8, 1, 1),
        "s5": ints(1, groups, per_group, 8, 8),
        "s4": ints(1, 8, 8, 8),
    }
    nodes = [
        node("Conv", ["x", "c1.w"], ["c1"]),
        node("Reshape", ["c1", "s5"], ["r5"]),
        node("Transpose", ["r5"], ["t"], perm=[0, 2, 1, 3, 4]),
        node("Reshape", ["t", "s4"], ["shuffled"]),
        node("Conv", ["shuffled", "c2.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert group.n_units == per_group
    # input channel i and i + 4 end up side by side (2j, 2j + 1) after the shuffle
    np.testing.assert_array_equal(group.labels[Space("c1", 1)], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(group.labels[Space("shuffled", 1)], [0, 0, 1, 1, 2, 2, 3, 3])
    prune_every_group(made)


@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_over_space_passes_channels(keepdims):
    consts = {"c.w": weight(6, 3, 1, 1), "axes": ints(2, 3), "g.w": weight(6, 4)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("ReduceMean", ["c", "axes"], ["m"], keepdims=keepdims),
    ]
    if keepdims:
        nodes.append(node("Squeeze", ["m", "axes"], ["f"]))
    nodes.append(node("MatMul", ["f" if keepdims else "m", "g.w"], ["y"]))
    made = model(nodes, X, ["y"], consts, opset=18)
    _, dep = analyze(made)
    assert ("g.w", 0) in members(group_with(dep, "c.w", 0))
    prune_every_group(made)


def test_unsqueeze_keeps_the_channel():
    seq = {"x": (2, 8)}
    consts = {"w1": weight(8, 6), "ax": ints(1), "w2": weight(6, 3)}
    nodes = [
        node("MatMul", ["x", "w1"], ["m"]),
        node("Unsqueeze", ["m", "ax"], ["u"]),
        node("MatMul", ["u", "w2"], ["y"]),
    ]
    made = model(nodes, seq, ["y"], consts)
    _, dep = analyze(made)
    assert ("u", 2) in members(group_with(dep, "w1", 1))
    prune_every_group(made)


def test_op_without_rule_is_a_barrier_with_its_reason():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("h", "c2", 6, 4))
    nodes.insert(1, node("LpNormalization", ["c1"], ["h"], axis=1))
    made = model(nodes, X, ["c2"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert not group.prunable
    assert any("LpNormalization" in r and "no rule" in r for r in group.blocked)
    assert dep.missing_rules == {"LpNormalization": 1}


def test_custom_domain_op_is_a_barrier():
    nodes, consts = chain(conv_block("x", "c1", 3, 6), conv_block("h", "c2", 6, 4))
    custom = node("Relu", ["c1"], ["h"])
    custom.domain = "com.example"
    nodes.insert(1, custom)
    made = model(nodes, X, ["c2"], consts, custom_domains=("com.example",))
    _, dep = analyze(made)
    group = group_with(dep, "c1.w", 0)
    assert not group.prunable and any("com.example::Relu" in r for r in group.blocked)


@pytest.mark.parametrize(
    ("op", "attrs", "reason"),
    [
        ("LayerNormalization", {"axis": 0}, "normalizes over this axis"),  # over two axes
        ("Softmax", {"axis": 1}, "normalizes over this axis"),
        ("ReduceSum", {"keepdims": 1}, "reduces over this axis"),
    ],
)
def test_ops_that_mix_channels_block_them(op, attrs, reason):
    seq = {"x": (2, 8)}
    consts = {"w1": weight(8, 6), "w2": weight(6, 3)}
    inputs = ["m"]
    if op == "LayerNormalization":
        consts |= {"ln.s": positive(2, 6), "ln.b": weight(2, 6)}  # normalized shape [2, 6]
        inputs += ["ln.s", "ln.b"]
    if op == "ReduceSum":
        consts["axes"] = ints(1)
        inputs.append("axes")
    nodes = [
        node("MatMul", ["x", "w1"], ["m"]),
        node(op, inputs, ["h"], **attrs),
        node("Mul", ["h", "m"], ["hm"]),
        node("MatMul", ["hm", "w2"], ["y"]),
    ]
    made = model(nodes, seq, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "w1", 1)
    assert not group.prunable and any(reason in r for r in group.blocked)


def test_shared_constant_identity_is_untied_before_analysis():
    """TorchScript deduplicates equal tensors as Identity(first); that must not couple layers."""
    nodes, consts = chain(
        conv_block("x", "a", 3, 6), conv_block("a", "b", 6, 6), conv_block("b", "c", 6, 4)
    )
    consts["b.b"] = consts["a.b"] = np.zeros(6, np.float32)
    nodes.insert(0, node("Identity", ["a.b"], ["b.b_dup"]))
    nodes[2].input[2] = "b.b_dup"
    del consts["b.b"]
    made = model(nodes, X, ["c"], consts)
    _, dep = analyze(made)
    assert group_with(dep, "a.w", 0) is not group_with(dep, "b.w", 0)
    prune_every_group(made)


def test_expand_keeps_channels_and_rewrites_its_target():
    consts = {"c.w": weight(6, 3, 1, 1), "target": ints(2, 6, 8, 8), "c2.w": weight(4, 6, 1, 1)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Expand", ["c", "target"], ["e"]),
        node("Conv", ["e", "c2.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    assert ("e", 1) in members(group_with(dep, "c.w", 0))
    pruned, _, _ = prune_every_group(made)
    target = next(n.input[1] for n in pruned.graph.node if n.op_type == "Expand")
    assert initializer(pruned, target).tolist() == [2, 3, 8, 8]


def test_shape_of_a_channel_tensor_blocks_it():
    consts = {"c.w": weight(6, 3, 1, 1), "c2.w": weight(4, 6, 1, 1)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Shape", ["c"], ["s"]),
        node("Reshape", ["c", "s"], ["r"]),
        node("Conv", ["r", "c2.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    made.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"  # keep Shape dynamic
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert not group.prunable and any(
        "Shape" in r and "reads this tensor" in r for r in group.blocked
    )


def test_reduce_mean_with_axes_attribute_before_opset_18():
    consts = {"c.w": weight(6, 3, 1, 1), "g.w": weight(6, 4)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=0),
        node("MatMul", ["m", "g.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts, opset=13)
    _, dep = analyze(made)
    assert ("g.w", 0) in members(group_with(dep, "c.w", 0))
    prune_every_group(made)


# -- sizes read at run time, merged symbolic axes, broadcast copies (transformer exports) -----


def test_static_size_read_from_a_partly_dynamic_shape_is_folded_so_the_channel_can_go():
    """`c.shape[1]` of a [1, C, height, 8] map is the constant C (a Gather of a static entry of
    Shape); the Reshape target built from it follows C when channels go, and `height` (a
    symbolic entry) stays read at run time."""
    consts = {
        "c.w": weight(6, 3, 1, 1),
        "g.w": weight(6, 4),
        "one": ints(1),
        "minus_one": ints(-1),
        "axis": ints(1),
        "zero": ints(0),
    }
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Shape", ["c"], ["shape"]),
        node("Gather", ["shape", "axis"], ["channels"], axis=0),
        node("Concat", ["one", "channels", "minus_one"], ["target"], axis=0),
        node("Reshape", ["c", "target"], ["r"]),
        node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0),
        node("MatMul", ["m", "g.w"], ["y"]),
    ]
    made = model(nodes, {"x": (1, 3, "height", 8)}, {"y": (1, 4)}, consts, opset=13)
    work, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert group.prunable, group.blocked
    assert {("c", 1), ("r", 1), ("g.w", 0)} <= members(group)
    assert "Gather" not in {n.op_type for n in work.graph.node}
    prune_every_group(made)


def test_shape_read_through_slices_blocks_only_the_axes_it_picks():
    consts = {"c.w": weight(6, 3, 1, 1), "g.w": weight(6, 4), "lo": ints(2), "hi": ints(3)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Shape", ["c"], ["shape"]),
        node("Slice", ["shape", "lo", "hi"], ["height"]),  # reads axis 2 only
        node("Cast", ["height"], ["h"], to=1),
        node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=0),
        node("MatMul", ["m", "g.w"], ["y"]),
    ]
    made = model(nodes, {"x": (1, 3, "height", 8)}, {"y": (1, 4), "h": (1,)}, consts, opset=13)
    _, dep = analyze(made)
    assert group_with(dep, "c.w", 0).prunable


def test_expand_broadcast_axis_loses_copies_and_its_target_follows():
    """MQA: one key head broadcast to the 4 query heads (Expand of a size-1 axis); a query head
    can go on its own, taking its copy of the key head, which itself stays."""
    consts = {
        "q.w": weight(16, 64),
        "k.w": weight(16, 16),
        "o.w": weight(64, 16),
        "heads": ints(2, 4, 16),
        "one_head": ints(2, 1, 16),
        "width": ints(2, 64),
    }
    nodes = [
        node("MatMul", ["x", "q.w"], ["q"]),
        node("Reshape", ["q", "heads"], ["qh"]),
        node("MatMul", ["x", "k.w"], ["k"]),
        node("Reshape", ["k", "one_head"], ["kh"]),
        node("Expand", ["kh", "heads"], ["ke"]),
        node("Mul", ["qh", "ke"], ["s"]),
        node("Reshape", ["s", "width"], ["m"]),
        node("MatMul", ["m", "o.w"], ["y"]),
    ]
    made = model(nodes, {"x": (2, 16)}, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "q.w", 1)
    assert group.kind == "head" and group.n_units == 4 and group.prunable
    assert ("ke", 1) in members(group) and ("o.w", 0) in members(group)
    assert not any(space.tensor == "k.w" for space in group.sizes)
    pruned, _, removals = prune_every_group(made)
    expand = next(n for n in pruned.graph.node if n.op_type == "Expand")
    assert initializer(pruned, expand.input[1]).tolist() == [2, 4 - len(removals[group.id]), 16]


def test_expand_broadcast_axis_with_a_run_time_target_blocks():
    consts = {"q.w": weight(16, 64), "k.w": weight(16, 16), "heads": ints(2, 4, 16)}
    consts |= {"one_head": ints(2, 1, 16), "o.w": weight(64, 16), "width": ints(2, 64)}
    nodes = [
        node("MatMul", ["x", "q.w"], ["q"]),
        node("Reshape", ["q", "heads"], ["qh"]),
        node("MatMul", ["x", "k.w"], ["k"]),
        node("Reshape", ["k", "one_head"], ["kh"]),
        node("Shape", ["t"], ["run_time"]),  # the whole vector: nothing to fold
        node("Expand", ["kh", "run_time"], ["ke"]),
        node("Mul", ["qh", "ke"], ["s"]),
        node("Reshape", ["s", "width"], ["m"]),
        node("MatMul", ["m", "o.w"], ["y"]),
    ]
    made = model(nodes, {"x": (2, 16), "t": ("n", 4, 16)}, {"y": (2, 16)}, consts)
    _, dep = analyze(made)
    assert not group_with(dep, "q.w", 1).prunable


@pytest.mark.parametrize(
    ("src", "dst", "segments"),
    [
        (("b", "s", 64), ("n", 64), [([0, 1], [0]), ([2], [1])]),  # GPT-2 Conv1D flatten
        (("n", 192), ("b", "s", 192), [([0], [0, 1]), ([1], [2])]),  # and back
        (("b", 4, "s", 16), ("n", "s", 16), [([0, 1], [0]), ([2], [1]), ([3], [2])]),
        (("b", "s", 4, 16), ("b", "s", 64), [([0], [0]), ([1], [1]), ([2, 3], [2])]),
        ((6, 4), (4, 6), [([0, 1], [0, 1])]),  # a static regrouping stays one run
        ((6, 4), (5, 4), None),
    ],
)
def test_reshape_runs_are_paired_from_both_ends_around_merged_symbols(src, dst, segments):
    from graphprune.ops import reshape_segments

    assert reshape_segments(src, dst) == segments


def test_conv1d_style_flatten_gemm_unflatten_carries_channels():
    """GPT-2's Conv1D: [b, s, E] -> [-1, E] -> Gemm -> [b, s, N] (b and s read at run time)."""
    consts = {
        "flat": ints(-1, 16),
        "fc.w": weight(16, 32),
        "fc.b": weight(32),
        "n": ints(32),
        "proj.w": weight(32, 16),
        "proj.b": weight(16),
        "e": ints(16),
        "i0": ints(0),
        "i1": ints(1),
    }
    nodes = [
        node("Shape", ["x"], ["shape"]),
        node("Gather", ["shape", "i0"], ["b"], axis=0),
        node("Gather", ["shape", "i1"], ["s"], axis=0),
        node("Reshape", ["x", "flat"], ["x2"]),
        node("Gemm", ["x2", "fc.w", "fc.b"], ["h2"]),
        node("Concat", ["b", "s", "n"], ["h_shape"], axis=0),
        node("Reshape", ["h2", "h_shape"], ["h"]),
        node("Relu", ["h"], ["r"]),
        node("Reshape", ["r", "flat_32"], ["r2"]),
        node("Gemm", ["r2", "proj.w", "proj.b"], ["y2"]),
        node("Concat", ["b", "s", "e"], ["y_shape"], axis=0),
        node("Reshape", ["y2", "y_shape"], ["y"]),
    ]
    consts["flat_32"] = ints(-1, 32)
    made = model(nodes, {"x": ("batch", "seq", 16)}, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "fc.w", 1)
    assert group.prunable, group.blocked
    assert {("h2", 1), ("h", 2), ("r", 2), ("r2", 1), ("proj.w", 0)} <= members(group)
    pruned, _, _ = prune_every_group(made)
    from graphprune.verify import run

    x = np.random.default_rng(1).standard_normal((3, 5, 16)).astype(np.float32)
    assert run(pruned, {"x": x})["y"].shape == (3, 5, 16)


def test_merge_transpose_split_round_trip_becomes_one_transpose():
    """sdpa's k^T under dynamo: [b, h, s, d] -> [b*h, s, d] -> swap -> [b, h, d, s]."""
    consts = {
        "k.w": weight(16, 32),
        "heads": ints(0, 0, 2, 16),
        "merged": ints(-1, 5, 16),
        "q.w": weight(16, 32),
        "o.w": weight(32, 16),
        "lo": ints(0),
        "two": ints(2),
        "d_s": ints(16, 5),
        "width": ints(0, 0, 32),
    }
    nodes = [
        node("MatMul", ["x", "q.w"], ["q"]),
        node("Reshape", ["q", "heads"], ["q4"]),
        node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        node("MatMul", ["x", "k.w"], ["k"]),
        node("Reshape", ["k", "heads"], ["k4"]),
        node("Transpose", ["k4"], ["kh"], perm=[0, 2, 1, 3]),
        node("Shape", ["kh"], ["k_shape"]),
        node("Slice", ["k_shape", "lo", "two"], ["b_h"]),
        node("Reshape", ["kh", "merged"], ["k3"]),
        node("Transpose", ["k3"], ["kt3"], perm=[0, 2, 1]),
        node("Concat", ["b_h", "d_s"], ["kt_shape"], axis=0),
        node("Reshape", ["kt3", "kt_shape"], ["kt"]),
        node("MatMul", ["qh", "kt"], ["scores"]),
        node("Softmax", ["scores"], ["p"], axis=-1),
        node("MatMul", ["p", "qh"], ["a"]),
        node("Transpose", ["a"], ["a4"], perm=[0, 2, 1, 3]),
        node("Reshape", ["a4", "width"], ["m"]),
        node("MatMul", ["m", "o.w"], ["y"]),
    ]
    made = model(nodes, {"x": ("b", 5, 16)}, ["y"], consts)
    work, dep = analyze(made)
    transposes = [n for n in work.graph.node if n.output[0] == "kt"]
    assert transposes[0].op_type == "Transpose"
    group = group_with(dep, "q.w", 1)
    assert group.kind == "head" and group.prunable, group.blocked
    assert ("k.w", 1) in members(group)
    prune_every_group(made)


def test_expand_to_a_run_time_size_keeps_what_inference_knows():
    """Expand(mask [1, 1, 1, s], Shape(m [b, 1, 1, s])) is [b, 1, 1, s]: a run-time target entry
    must not be taken for 1 (that once made onnxruntime reuse a batch-1 buffer at batch 3)."""
    nodes = [
        node("Max", ["a", "c"], ["m"]),
        node("Shape", ["m"], ["shape"]),
        node("Expand", ["c", "shape"], ["e"]),
        node("Add", ["e", "a"], ["y"]),
    ]
    made = model(nodes, {"a": ("b", 1, 1, "s"), "c": (1, 1, 1, "s")}, ["y"], {})
    work, _ = analyze(made)
    from graphprune.graph import GraphIndex

    assert GraphIndex.build(work).shapes["e"][0] != 1


def test_a_folded_scalar_stays_a_scalar():
    from graphprune.edit import ConstantStore

    store = ConstantStore(model([node("Relu", ["x"], ["y"])], {"x": (2,)}, ["y"], {}))
    store.add_named("scalar", np.array(3, dtype=np.int64))
    assert store.get("scalar").shape == ()


# -- Gather, Concat of unknown widths, flatten targets read as one slice of a Shape ------------


def test_gather_of_an_embedding_table_makes_the_last_axis():
    """Gather(table [V, E], ids [b, s]) -> [b, s, E]: the table's axis 1 makes the output's last
    axis, the ids' axes become its leading ones, the gathered vocabulary axis is no channel."""
    consts = {"emb": weight(10, 6), "w": weight(6, 4), "w2": weight(4, 3)}
    nodes = [
        node("Cast", ["x"], ["ids"], to=7),
        node("Gather", ["emb", "ids"], ["e"], axis=0),
        node("MatMul", ["e", "w"], ["h"]),
        node("MatMul", ["h", "w2"], ["y"]),
    ]
    made = model(nodes, {"x": (2, 5)}, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "emb", 1)
    assert members(group) == {("emb", 1), ("e", 2), ("w", 0)}
    assert group.roles == {Space("emb", 1): Role.OUT, Space("w", 0): Role.IN}
    assert group.prunable and group.kind == "channel"


def test_gather_on_the_channel_axis_blocks_it():
    consts = {"c.w": weight(6, 3, 1, 1), "pick": ints(0, 2, 4), "g.w": weight(3, 4)}
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Gather", ["c", "pick"], ["p"], axis=1),
        node("ReduceMean", ["p"], ["m"], axes=[2, 3], keepdims=0),
        node("MatMul", ["m", "g.w"], ["y"]),
    ]
    made = model(nodes, X, ["y"], consts)
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert not group.prunable and any("does not carry c[axis 1]" in r for r in group.blocked)


def test_concat_with_an_unknown_width_links_no_input_on_its_axis_but_passes_the_others():
    """An input whose width on the concat axis is unknown: no input's offsets can be known, so
    none is linked on that axis (linking the first ones only would let their group pass the
    closure check while the unknown input keeps its width); every input's other axes pass."""
    consts = {"a.w": weight(6, 3, 1, 1), "b.w": weight(6, 3, 1, 1), "g.w": weight(6, 4)}
    nodes = [
        node("Conv", ["x", "a.w"], ["a"]),
        node("Conv", ["x", "b.w"], ["b"]),
        node("Concat", ["a", "b"], ["c"], axis=2),
        node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=0),
        node("MatMul", ["m", "g.w"], ["y"]),
    ]
    made = model(nodes, {"x": (1, 3, "height", 8)}, {"y": (1, 4)}, consts)
    _, dep = analyze(made)
    group = group_with(dep, "a.w", 0)  # channels: axis 1 passes from both inputs
    assert {("a", 1), ("b", 1), ("c", 1), ("b.w", 0), ("g.w", 0)} <= members(group)
    assert group.prunable, group.blocked
    assert not any(Space("a", 2) in g.sizes or Space("c", 2) in g.sizes for g in dep.groups)
    prune_every_group(made)


def test_flatten_target_sliced_from_a_partly_dynamic_shape_is_split_into_runs():
    """TorchScript's flatten(2): Reshape(x, Concat(Slice(Shape(x), 0, 2), [-1])) reads batch
    (symbolic) and channels (static) in one Slice. Preparation rewrites the Slice as
    Concat(Shape(x, 0, 1), [C], [-1]), so the channel count is a constant the Reshape rule
    rewrites, and the batch is read as Shape(x, 0, 1) (onnx's data propagation sees through it):
    the channels can go."""
    consts = {
        "c.w": weight(6, 3, 1, 1),
        "g.w": weight(6, 4),
        "zero": ints(0),
        "two": ints(2),
        "minus_one": ints(-1),
    }
    nodes = [
        node("Conv", ["x", "c.w"], ["c"]),
        node("Shape", ["c"], ["shape"]),
        node("Slice", ["shape", "zero", "two"], ["lead"]),
        node("Concat", ["lead", "minus_one"], ["target"], axis=0),
        node("Reshape", ["c", "target"], ["r"]),  # [batch, 6, 64]
        node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        node("MatMul", ["t", "g.w"], ["y"]),
    ]
    made = model(nodes, {"x": ("batch", 3, 8, 8)}, {"y": ("batch", 64, 4)}, consts)
    work, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    assert group.prunable, group.blocked
    assert {("c", 1), ("r", 1), ("t", 2), ("g.w", 0)} <= members(group)
    assert "Slice" not in {n.op_type for n in work.graph.node}
    reads = [n for n in work.graph.node if n.op_type == "Shape" and n.attribute]
    assert sorted((a.name, a.i) for n in reads for a in n.attribute) == [("end", 1), ("start", 0)]
    pruned, _, _ = prune_every_group(made)
    from graphprune.verify import run

    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert run(pruned, {"x": x})["y"].shape == (3, 64, 4)  # batch still read at run time


def test_a_minus_one_that_inference_cannot_pin_is_what_its_matmul_reader_needs():
    """Swin's shifted windows: the merge back `[b*nW, 16, h, d] -> [b*nW, 16, -1]` reads its
    first entry from a tensor whose window batch inference named differently, so the -1 cannot
    be computed from the sizes. Its only reader is a MatMul by a [32, 8] weight: the model runs
    only when that axis is 32, so the -1 is written as 32 and the head axis can be carried."""
    consts = {"w": weight(32, 8), "sixteen": ints(16), "minus_one": ints(-1)}
    nodes = [
        node("Shape", ["m"], ["m_shape"], start=0, end=1),
        node("Concat", ["m_shape", "sixteen", "minus_one"], ["target"], axis=0),
        node("Reshape", ["x", "target"], ["merged"]),
        node("MatMul", ["merged", "w"], ["y"]),
    ]
    inputs = {"x": ("n", 16, 2, 16), "m": ("windows", 3)}
    made = model(nodes, inputs, {"y": ("windows", 16, 8)}, consts)
    work, dep = analyze(made)
    (concat,) = [n for n in work.graph.node if n.op_type == "Concat"]
    assert initializer(work, concat.input[2]).tolist() == [32]
    assert dep.index.shapes["merged"][1:] == (16, 32)


# ---------------------------------------------------------------------------------------------
# Einsum: labels kept in the output link operand and output; summed labels link the operands
# ---------------------------------------------------------------------------------------------


def einsum_mlp(first: str, second: str, x_shape: tuple = (2, 4, 8)):
    nodes = [
        node("Einsum", ["x", "w1"], ["h"], equation=first),
        node("Relu", ["h"], ["r"]),
        node("Einsum", ["r", "w2"], ["y"], equation=second),
    ]
    return model(nodes, {"x": x_shape}, ["y"], {"w1": weight(8, 12), "w2": weight(12, 8)})


@pytest.mark.parametrize(
    "first, second",
    [("bsd,df->bsf", "bsf,fd->bsd"), ("...d,df->...f", "...f,fd->...d"), ("abd,dc", "abc,cd")],
    ids=["explicit", "ellipsis", "implicit"],
)
def test_einsum_mlp_width_is_one_group_and_prunes_exactly(first, second):
    made = einsum_mlp(first, second)
    _, dep = analyze(made)
    group = group_with(dep, "w1", 1)
    assert members(group) == {("w1", 1), ("h", 2), ("r", 2), ("w2", 0)}
    assert group.roles == {Space("w1", 1): Role.OUT, Space("w2", 0): Role.IN}
    assert group.prunable and group.n_units == 12
    pruned, _, _ = prune_at_ratio(made, 0.5)
    assert initializer(pruned, "w1").shape == (8, 6) and initializer(pruned, "w2").shape == (6, 8)


def einsum_attention():
    """q, k, v as [B, S, heads, head_dim] from [D, heads, head_dim] weights, all in einsum."""
    project = "bsd,dhk->bshk"
    nodes = [
        node("Einsum", ["x", "wq"], ["q"], equation=project),
        node("Einsum", ["x", "wk"], ["k"], equation=project),
        node("Einsum", ["x", "wv"], ["v"], equation=project),
        node("Einsum", ["q", "k"], ["s"], equation="bshk,bthk->bhst"),
        node("Softmax", ["s"], ["p"], axis=-1),
        node("Einsum", ["p", "v"], ["o"], equation="bhst,bthk->bshk"),
        node("Einsum", ["o", "wo"], ["y"], equation="bshk,hkd->bsd"),
    ]
    consts = {f"w{n}": weight(8, 3, 4) for n in "qkv"} | {"wo": weight(3, 4, 8)}
    return model(nodes, {"x": (2, 5, 8)}, ["y"], consts)


def test_einsum_attention_heads_prune_and_the_qk_sum_is_blocked():
    made = einsum_attention()
    _, dep = analyze(made)
    heads = group_with(dep, "wq", 1)
    assert {("wq", 1), ("wk", 1), ("wv", 1), ("wo", 0), ("s", 1)} <= members(heads)
    assert heads.prunable and heads.n_units == 3
    # q·k sums head_dim over two activations: no weight reads it, so zeroing cannot stand in
    qk = group_with(dep, "wq", 2)
    assert not qk.prunable and "product of activations" in qk.blocked[0]
    assert group_with(dep, "wv", 2).prunable  # v's head_dim is read by wo
    pruned, _, removals = prune_at_ratio(made, 0.4)
    assert initializer(pruned, "wo").shape[0] < 3 and len(removals) == 2


def test_einsum_diagonal_is_not_a_channel():
    nodes = [
        node("MatMul", ["x", "w"], ["h"]),
        node("Einsum", ["h"], ["y"], equation="bii->bi"),
    ]
    made = model(nodes, {"x": (2, 6, 6)}, ["y"], {"w": weight(6, 6)})
    _, dep = analyze(made)
    assert not group_with(dep, "w", 1).prunable


def if_with_weights_in_each_branch():
    """c0 -> Relu -> c1 -> Relu -> If(mean(x) > 0): the then branch holds a Conv weight of its
    own, the else branch a Gemm-like MatMul reading a main-graph weight from inside the body."""
    then_branch = helper.make_graph(
        [node("Conv", ["r1", "then.w"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", 1, (1, 4, 8, 8))],
        [helper.make_tensor("then.w", 1, (4, 8, 1, 1), weight(4, 8, 1, 1).reshape(-1).tolist())],
    )
    else_branch = helper.make_graph(
        [
            node("Transpose", ["r1"], ["e_t"], perm=[0, 2, 3, 1]),
            node("MatMul", ["e_t", "else.w"], ["e_m"]),
            node("Transpose", ["e_m"], ["e"], perm=[0, 3, 1, 2]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e", 1, (1, 4, 8, 8))],
    )
    nodes, consts = chain(
        conv_block("x", "c0", 3, 6, 3),
        ([node("Relu", ["c0"], ["r0"])], {}),
        conv_block("r0", "c1", 6, 8, 3),
        ([node("Relu", ["c1"], ["r1"])], {}),
    )
    nodes += [
        node("ReduceMean", ["x"], ["mean"], keepdims=0),
        node("Greater", ["mean", "zero"], ["cond"]),
        node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    consts |= {"zero": np.array(0.0, np.float32), "else.w": weight(8, 4)}
    return model(nodes, X, {"y": (1, 4, 8, 8)}, consts)


def test_if_bodies_are_explained_barriers_and_their_weights_stay_untouched():
    made = if_with_weights_in_each_branch()
    _work, dep = analyze(made)
    before = group_with(dep, "c0.w", 0)
    assert before.prunable and members(before) >= {("c0.w", 0), ("c1.w", 1)}
    at_if = group_with(dep, "c1.w", 0)
    reason = (
        "If 'y': control flow If: r1[axis 1] is read inside its then/else branches, "
        "which are not analysed (nothing inside a body is pruned)"
    )
    assert reason in at_if.blocked
    assert not any(Space("else.w", axis) in g.sizes for g in dep.all_groups for axis in (0, 1))
    pruned, _, removals = prune_every_group(made)  # the oracle passes through both branches
    assert set(removals) == {before.id}
    assert initializer(pruned, "else.w").tobytes() == initializer(made, "else.w").tobytes()
    [then_before] = [a.g for a in made.graph.node[-1].attribute if a.name == "then_branch"]
    [then_after] = [a.g for a in pruned.graph.node[-1].attribute if a.name == "then_branch"]
    assert then_after.initializer[0] == then_before.initializer[0]
