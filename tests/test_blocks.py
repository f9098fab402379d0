"""Residual sub-blocks: finding them, their importance, and removing them (COMP's coarse stage).

Oracle: the original model with each removed branch's output multiplied by zero must equal the
rewritten model exactly on onnxruntime (graph optimizations off, so both run the same kernels).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from graphprune.passes.remove_blocks import remove_blocks, zeroed_branches

from graphprune.blocks import block_importance, find_blocks, least_important
from graphprune.errors import BadInput
from graphprune.graph import GraphIndex
from graphprune.verify import run
from tests.graphs import ints, model, node, positive, weight

EXACT = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
D, HEADS, HIDDEN = 16, 2, 32


def attention(prefix: str, source: str, out: str) -> tuple[list, dict]:
    """Multi-head self-attention of `source` [1, T, D] into `out`; returns (nodes, constants)."""
    p = prefix
    consts = {f"{p}.{n}": weight(D, D) * 0.3 for n in ("wq", "wk", "wv", "wo")}
    consts |= {f"{p}.heads": ints(1, -1, HEADS, D // HEADS), f"{p}.merged": ints(1, -1, D)}
    consts[f"{p}.scale"] = np.array(1 / np.sqrt(D // HEADS), dtype=np.float32)
    nodes = [node("MatMul", [source, f"{p}.w{n}"], [f"{p}.{n}"]) for n in "qkv"]
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes.append(node("Reshape", [f"{p}.{n}", f"{p}.heads"], [f"{p}.{n}4"]))
        nodes.append(node("Transpose", [f"{p}.{n}4"], [f"{p}.{n}h"], perm=perm))
    nodes += [
        node("MatMul", [f"{p}.qh", f"{p}.kh"], [f"{p}.scores"]),
        node("Mul", [f"{p}.scores", f"{p}.scale"], [f"{p}.scaled"]),
        node("Softmax", [f"{p}.scaled"], [f"{p}.probs"], axis=-1),
        node("MatMul", [f"{p}.probs", f"{p}.vh"], [f"{p}.ctx"]),
        node("Transpose", [f"{p}.ctx"], [f"{p}.ctxt"], perm=[0, 2, 1, 3]),
        node("Reshape", [f"{p}.ctxt", f"{p}.merged"], [f"{p}.ctx3"]),
        node("MatMul", [f"{p}.ctx3", f"{p}.wo"], [out]),
    ]
    return nodes, consts


def mlp(prefix: str, source: str, out: str) -> tuple[list, dict]:
    consts = {f"{prefix}.w1": weight(D, HIDDEN) * 0.3, f"{prefix}.w2": weight(HIDDEN, D) * 0.3}
    nodes = [
        node("MatMul", [source, f"{prefix}.w1"], [f"{prefix}.up"]),
        node("Relu", [f"{prefix}.up"], [f"{prefix}.act"]),
        node("MatMul", [f"{prefix}.act", f"{prefix}.w2"], [out]),
    ]
    return nodes, consts


def norm(prefix: str, source: str, out: str) -> tuple[list, dict]:
    consts = {f"{prefix}.g": positive(D), f"{prefix}.b": weight(D)}
    return [node("LayerNormalization", [source, f"{prefix}.g", f"{prefix}.b"], [out])], consts


def transformer(post_ln: bool = False, layers: int = 1):
    """Pre-LN: h = x + attn(ln(x)); y = h + mlp(ln(h)). Post-LN: h = ln(x + attn(x));
    y = ln(h + mlp(h)). Sequence length is symbolic."""
    nodes, consts, stream = [], {}, "x"
    for i in range(layers):
        for kind, build in (("attn", attention), ("mlp", mlp)):
            p = f"l{i}.{kind}"
            parts = [] if post_ln else [norm(f"{p}.ln", stream, f"{p}.in")]
            parts.append(build(p, stream if post_ln else f"{p}.in", f"{p}.out"))
            for part_nodes, part_consts in parts:
                nodes += part_nodes
                consts |= part_consts
            nodes.append(node("Add", [stream, f"{p}.out"], [f"{p}.res"]))
            stream = f"{p}.res"
            if post_ln:
                part_nodes, part_consts = norm(f"{p}.post", stream, f"{p}.normed")
                nodes += part_nodes
                consts |= part_consts
                stream = f"{p}.normed"
    nodes.append(node("Identity", [stream], ["y"]))
    return model(nodes, {"x": (1, "T", D)}, ["y"], consts)


def feeds(length: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, length, D)).astype(np.float32)}


def names_of(made, block) -> set[str]:
    return {made.graph.node[p].output[0] for p in block.nodes}


@pytest.mark.parametrize("post_ln", [False, True], ids=["pre-ln", "post-ln"])
def test_finds_the_attention_and_mlp_sub_blocks_of_each_layer(post_ln):
    made = transformer(post_ln, layers=2)
    blocks = find_blocks(made)
    assert [b.id for b in blocks] == [f"l{i}.{k}.res" for i in (0, 1) for k in ("attn", "mlp")]
    assert [b.kind for b in blocks] == ["attention", "mlp"] * 2
    after = "normed" if post_ln else "res"
    assert [b.stream for b in blocks] == [
        "x",
        "l0.attn." + after,
        "l0.mlp." + after,
        "l1.attn." + after,
    ]
    assert all(b.branch == b.id.replace(".res", ".out") for b in blocks)
    mlp_branch = {"l0.mlp.up", "l0.mlp.act", "l0.mlp.out"} | (set() if post_ln else {"l0.mlp.in"})
    assert names_of(made, blocks[1]) == mlp_branch
    own = 2 * D * HIDDEN + (0 if post_ln else 2 * D)  # the MLP's weights and its pre-norm
    assert blocks[1].parameters == own
    assert blocks[0].parameters == 4 * D * D + 1 + (0 if post_ln else 2 * D)  # + the scale


def test_adds_that_are_no_residual_sub_block_are_left_alone():
    consts = {"c": np.array(0.044715, np.float32), "w1": weight(D, D), "w2": weight(D, D)}
    nodes = [
        node("Mul", ["x", "x"], ["x2"]),
        node("Mul", ["x2", "x"], ["x3"]),
        node("Mul", ["x3", "c"], ["cubic"]),
        node("Add", ["x", "cubic"], ["gelu_inner"]),  # no weights in the branch
        node("MatMul", ["gelu_inner", "w1"], ["a"]),
        node("MatMul", ["gelu_inner", "w2"], ["b"]),
        node("Add", ["a", "b"], ["sum"]),  # neither input is computed from the other
        node("Add", ["sum", "c"], ["y"]),  # a constant input
    ]
    made = model(nodes, {"x": (1, "T", D)}, ["y"], consts)
    assert find_blocks(made) == []


CHOICES = [
    ["l0.attn.res"],
    ["l0.mlp.res"],
    ["l0.attn.res", "l0.mlp.res"],
    ["l1.mlp.res", "l0.mlp.res"],
]


@pytest.mark.parametrize("post_ln", [False, True], ids=["pre-ln", "post-ln"])
@pytest.mark.parametrize("chosen", CHOICES, ids=lambda c: "+".join(c))
def test_removal_equals_the_branch_times_zero_exactly_at_any_length(post_ln, chosen):
    made = transformer(post_ln, layers=2)
    removed = remove_blocks(made, chosen)
    reference = zeroed_branches(made, chosen)
    for length in (3, 7, 12):
        expected = run(reference, feeds(length), optimization=EXACT)["y"]
        actual = run(removed, feeds(length), optimization=EXACT)["y"]
        np.testing.assert_array_equal(actual, expected)
        dense = run(made, feeds(length), optimization=EXACT)["y"]
        assert not np.allclose(actual, dense, atol=1e-3)  # the blocks did something
    gone = {c.replace(".res", "") for c in chosen}
    left = {t.name for t in removed.graph.initializer}
    assert not any(name.startswith(tuple(gone)) and ".post" not in name for name in left)
    kept = {t.name for t in made.graph.initializer if not t.name.startswith(tuple(gone))}
    assert kept <= left
    softmaxes = [n for n in removed.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 2 - sum(".attn." in c for c in chosen)
    assert {b.id for b in find_blocks(removed)} == {b.id for b in find_blocks(made)} - set(chosen)


def test_removing_every_block_leaves_the_identity_or_the_norms():
    made = transformer(layers=2)
    every = [b.id for b in find_blocks(made)]
    removed = remove_blocks(made, every)
    assert [n.op_type for n in removed.graph.node] == ["Identity"]
    x = feeds(5)["x"]
    np.testing.assert_array_equal(run(removed, {"x": x})["y"], x)
    assert not removed.graph.initializer


def test_unknown_block_is_refused_in_one_line():
    with pytest.raises(BadInput, match="no residual sub-block ends in tensor 'nope'"):
        remove_blocks(transformer(), ["nope"])


def test_block_importance_is_one_minus_the_mean_token_cosine():
    consts = {"w1": weight(D, HIDDEN) * 0.2, "w2": weight(HIDDEN, D) * 0.2}
    nodes = [
        node("MatMul", ["x", "w1"], ["up"]),
        node("Relu", ["up"], ["act"]),
        node("MatMul", ["act", "w2"], ["out"]),
        node("Add", ["x", "out"], ["h"]),
        node("MatMul", ["h", "w1"], ["up2"]),
        node("Relu", ["up2"], ["act2"]),
        node("MatMul", ["act2", "w2"], ["out2"]),
        node("Mul", ["out2", "ten"], ["big"]),
        node("Add", ["h", "big"], ["y"]),
    ]
    consts["ten"] = np.array(10.0, np.float32)
    made = model(nodes, {"x": (2, "T", D)}, ["y"], consts)
    blocks = find_blocks(made)
    batches = [
        {"x": np.random.default_rng(s).standard_normal((2, 6, D)).astype(np.float32)}
        for s in (1, 2)
    ]
    w1, w2 = consts["w1"].astype(np.float64), consts["w2"].astype(np.float64)
    cosines = [[], []]
    for batch in batches:
        x = batch["x"].astype(np.float64)
        h = x + np.maximum(x @ w1, 0) @ w2
        y = h + 10 * np.maximum(h @ w1, 0) @ w2
        for i, (a, b) in enumerate(((x, h), (h, y))):
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            cosines[i].extend(cos.ravel())
    expected = [1 - np.mean(c) for c in cosines]
    np.testing.assert_allclose(block_importance(made, blocks, batches), expected, rtol=1e-5)
    assert [o.name for o in made.graph.output] == ["y"]  # exposed tensors were taken away
    assert [b.id for b in least_important(made, 1, batches)] == ["h"]  # the 10x branch turns more


def float_parameters(made) -> int:
    constants = GraphIndex.build(made).constants
    return sum(constants.size(n) for n in constants if constants.is_float(n))


ZOO_CASES = [("bert_tiny", "torchscript"), ("llama_tiny", "dynamo"), ("minilm_l6", "torchscript")]
ZOO_CASES += [("resnet18", "dynamo")]
ZOO_KINDS = {  # the sub-blocks each model has, in graph order
    "bert_tiny": ["attention", "mlp"] * 2,
    "llama_tiny": ["attention", "mlp"] * 2,
    "minilm_l6": ["attention", "mlp"] * 6,
    "resnet18": ["conv"] * 5,  # 8 basic blocks, 3 of them with a downsampling shortcut
}


@pytest.mark.zoo
@pytest.mark.parametrize(("name", "exporter"), ZOO_CASES, ids=lambda v: v)
def test_zoo_blocks_are_found_ranked_and_removed_exactly(name, exporter):
    import onnx

    from models.entry import DYNAMIC_CHECK_SIZES
    from models.zoo import ZOO, example_inputs, export

    entry = ZOO[name]
    if not entry.available():
        pytest.skip(f"{name} needs packages that are not installed")
    made = onnx.load(str(export(name, exporter)))
    blocks = find_blocks(made)
    assert [b.kind for b in blocks] == ZOO_KINDS[name]
    batches = [example_inputs(entry, seed=s, sizes={"batch": 2, "sequence": 16}) for s in (0, 1)]
    scores = block_importance(made, blocks, batches)
    assert np.all((scores > 0) & (scores < 2))
    chosen = [b.id for b in least_important(made, 2, batches)]
    assert len(set(chosen)) == 2
    removed = remove_blocks(made, chosen)
    reference = zeroed_branches(made, chosen)
    removed_parameters = float_parameters(made) - float_parameters(removed)
    assert removed_parameters == sum(b.parameters for b in blocks if b.id in chosen)
    for sizes in ({"batch": 2, "sequence": 16}, dict(DYNAMIC_CHECK_SIZES)):
        inputs = example_inputs(entry, seed=3, sizes=sizes)
        expected = run(reference, inputs, optimization=EXACT)
        actual = run(removed, inputs, optimization=EXACT)
        assert expected.keys() == actual.keys()
        for output in expected:
            np.testing.assert_array_equal(actual[output], expected[output])


def test_conv_residual_block_is_found_scored_over_channels_and_removed_in_place():
    consts = {"c1": weight(4, 4, 3, 3) * 0.3, "c2": weight(4, 4, 3, 3) * 0.3}
    nodes = [
        node("Conv", ["x", "c1"], ["a"], pads=[1, 1, 1, 1]),
        node("Relu", ["a"], ["r"]),
        node("Conv", ["r", "c2"], ["b"], pads=[1, 1, 1, 1]),
        node("Add", ["x", "b"], ["h"]),
        node("Relu", ["h"], ["y"]),
    ]
    made = model(nodes, {"x": (1, 4, "H", "W")}, ["y", "h"], consts)  # h is also an output
    [block] = find_blocks(made)
    assert (block.kind, block.stream, block.parameters) == ("conv", "x", 2 * 4 * 4 * 9)
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    h = run(made, {"x": x})["h"].astype(np.float64)
    cos = (x * h).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(h, axis=1))  # channels
    score = block_importance(made, [block], [{"x": x}])
    np.testing.assert_allclose(score, [1 - cos.mean()], rtol=1e-5)
    expected = run(zeroed_branches(made, ["h"]), {"x": x}, optimization=EXACT)
    removed = remove_blocks(made, ["h"], in_place=True)
    assert removed is made
    assert [n.op_type for n in made.graph.node] == ["Identity", "Relu"]  # h stays an output
    actual = run(removed, {"x": x}, optimization=EXACT)
    for name in ("y", "h"):
        np.testing.assert_array_equal(actual[name], expected[name])
    np.testing.assert_array_equal(actual["h"], x)
