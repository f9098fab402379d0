"""Rules for the com.microsoft ops that onnxruntime.transformers.optimizer fuses attention into:
exact group membership, attribute rewrites, and the oracle on onnxruntime's contrib kernels."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphprune.ops import Space
from tests.graphs import analyze, group_with, members, prune_every_group, weight

HIDDEN, HEADS, HEAD_DIM = 32, 4, 8


def contrib_model(nodes, inputs, outputs, constants) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "contrib",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    made = helper.make_model(graph, opset_imports=opsets)
    made.ir_version = 8
    return made


def ms(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=outputs[0], domain="com.microsoft", **attrs)


X = {"x": (TensorProto.FLOAT, [2, 5, HIDDEN])}


def attribute(made: onnx.ModelProto, op: str, name: str) -> int:
    node = next(n for n in made.graph.node if n.op_type == op)
    return next(a.i for a in node.attribute if a.name == name)


def test_fused_attention_removes_whole_heads_and_rewrites_num_heads():
    consts = {
        "qkv.w": weight(HIDDEN, 3 * HIDDEN),
        "qkv.b": weight(3 * HIDDEN),
        "o.w": weight(HIDDEN, HIDDEN),
    }
    nodes = [
        ms("Attention", ["x", "qkv.w", "qkv.b"], ["a"], num_heads=HEADS),
        helper.make_node("MatMul", ["a", "o.w"], ["y"]),
    ]
    made = contrib_model(nodes, X, {"y": [2, 5, HIDDEN]}, consts)
    _, dep = analyze(made)
    group = group_with(dep, "qkv.w", 1)
    assert group.kind == "head" and group.n_units == HEADS and group.prunable
    assert members(group) == {("qkv.w", 1), ("qkv.b", 0), ("a", 2), ("o.w", 0)}
    # head 1 owns columns 8..15 of the q, k and v blocks
    labels = group.labels[Space("qkv.w", 1)]
    assert set(np.flatnonzero(labels == labels[8])) == {
        *range(8, 16),
        *range(40, 48),
        *range(72, 80),
    }
    pruned, _, _ = prune_every_group(made)
    assert attribute(pruned, "Attention", "num_heads") == 2


def test_multi_head_attention_couples_q_k_v_and_output_by_head():
    consts = {f"{n}.w": weight(HIDDEN, HIDDEN) for n in ("q", "k", "v", "o")}
    nodes = [helper.make_node("MatMul", ["x", f"{n}.w"], [n]) for n in ("q", "k", "v")]
    nodes += [
        ms("MultiHeadAttention", ["q", "k", "v"], ["a"], num_heads=HEADS),
        helper.make_node("MatMul", ["a", "o.w"], ["y"]),
    ]
    made = contrib_model(nodes, X, {"y": [2, 5, HIDDEN]}, consts)
    _, dep = analyze(made)
    group = group_with(dep, "q.w", 1)
    assert group.kind == "head" and group.n_units == HEADS and group.prunable
    assert {("k.w", 1), ("v.w", 1), ("o.w", 0)} <= members(group)
    pruned, _, _ = prune_every_group(made)
    assert attribute(pruned, "MultiHeadAttention", "num_heads") == 2


def test_group_query_attention_prunes_key_value_groups():
    kv_heads = 2
    consts = {
        "q.w": weight(HIDDEN, HIDDEN),
        "k.w": weight(HIDDEN, kv_heads * HEAD_DIM),
        "v.w": weight(HIDDEN, kv_heads * HEAD_DIM),
        "o.w": weight(HIDDEN, HIDDEN),
        "seqlens": np.array([4, 4], np.int32),
        "total": np.array(5, np.int32),
    }
    nodes = [helper.make_node("MatMul", ["x", f"{n}.w"], [n]) for n in ("q", "k", "v")]
    nodes += [
        ms(
            "GroupQueryAttention",
            ["q", "k", "v", "", "", "seqlens", "total"],
            ["a", "present_k", "present_v"],
            num_heads=HEADS,
            kv_num_heads=kv_heads,
        ),
        helper.make_node("MatMul", ["a", "o.w"], ["y"]),
    ]
    made = contrib_model(nodes, X, {"y": [2, 5, HIDDEN]}, consts)
    _, dep = analyze(made)
    group = group_with(dep, "k.w", 1)
    assert group.kind == "kv-group" and group.n_units == kv_heads and group.prunable
    # key/value head 0 serves query heads 0 and 1: channels 0..15 of q
    np.testing.assert_array_equal(group.labels[Space("q.w", 1)], np.repeat([0, 1], 16))
    pruned, _, _ = prune_every_group(made)
    assert attribute(pruned, "GroupQueryAttention", "num_heads") == 2
    assert attribute(pruned, "GroupQueryAttention", "kv_num_heads") == 1


def test_fast_gelu_bias_follows_the_mlp_channel_and_skip_norm_blocks_hidden():
    consts = {
        "up.w": weight(HIDDEN, 64),
        "up.b": weight(64),
        "down.w": weight(64, HIDDEN),
        "g": weight(HIDDEN),
        "b": weight(HIDDEN),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "up.w"], ["up"]),
        ms("FastGelu", ["up", "up.b"], ["act"]),
        helper.make_node("MatMul", ["act", "down.w"], ["down"]),
        ms("SkipLayerNormalization", ["down", "x", "g", "b"], ["y"]),
    ]
    made = contrib_model(nodes, X, {"y": [2, 5, HIDDEN]}, consts)
    _, dep = analyze(made)
    mlp = group_with(dep, "up.w", 1)
    assert members(mlp) == {("up.w", 1), ("up", 2), ("up.b", 0), ("act", 2), ("down.w", 0)}
    hidden = group_with(dep, "down.w", 1)  # the norm links it (inexact); the input blocks it
    assert hidden.kind == "hidden" and not hidden.exact and not hidden.prunable
    assert any("SkipLayerNormalization normalizes" in r for r in hidden.inexact)
    assert any("x[axis 2] is a graph input" in r for r in hidden.blocked)
    prune_every_group(made)


def test_shape_inference_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic inference dumps files into the cwd when it gives up."""
    consts = {f"{n}.w": weight(HIDDEN, HIDDEN) for n in ("q", "k", "v")}
    consts |= {"seqlens": np.array([4, 4], np.int32), "total": np.array(5, np.int32)}
    nodes = [helper.make_node("MatMul", ["x", f"{n}.w"], [n]) for n in ("q", "k", "v")]
    nodes.append(
        ms(
            "GroupQueryAttention",
            ["q", "k", "v", "", "", "seqlens", "total"],
            ["y", "pk", "pv"],
            num_heads=HEADS,
            kv_num_heads=HEADS,
        )
    )
    made = contrib_model(nodes, X, {"y": [2, 5, HIDDEN]}, consts)
    monkeypatch.chdir(tmp_path)
    analyze(made)
    assert list(tmp_path.iterdir()) == []
