"""Mixture of experts: expert groups, their removal against the -inf router oracle, refusal
below top-k, expert-MLP channels against the zero-then-prune oracle, and STUN's clustering
against a hand-computed example. Small handcrafted graphs; real exports in the zoo test."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphprune.passes.remove_experts import remove_experts
from graphprune.passes.slice_channels import slice_channels
from graphprune.passes.stun import Stun, agglomerate, coselection_rate, distances
from onnx import helper

from graphprune.errors import BadInput
from graphprune.moe import (
    Expert,
    ExpertContext,
    MoELayer,
    RouterStats,
    find_layers,
    removal_counts,
)
from graphprune.moe_prune import (
    expert_counts,
    expert_mlp_groups,
    expert_oracle,
    masked_model,
    prune_experts,
    router_statistics,
)
from graphprune.ops import Space
from graphprune.verify import oracle, random_inputs, run
from tests.graphs import analyze, group_with, initializer, ints, members, model, node, weight

T, H, E, W, K = 6, 8, 4, 5, 2  # tokens, hidden, experts, expert width, top-k
LAST = "axes_last"


def routed_block(renormalize: bool = True, shared: bool = False):
    """Mixtral-style MoE on x [T, H]: router MatMul + bias -> Softmax -> TopK -> (renormalize)
    -> per expert: gate = ReduceSum(w * Cast(Equal(ids, e))), y_e = W2_e relu(W1_e x),
    acc += y_e * gate, starting from zeros_like(x) (ConstantOfShape(Shape(x))). With `shared`,
    a Qwen2-MoE shared expert times Sigmoid(x @ g) is added to the routed sum."""
    consts = {"router.w": weight(H, E), "router.b": weight(E), "k": ints(K), LAST: ints(-1)}
    nodes = [
        node("MatMul", ["x", "router.w"], ["logits0"]),
        node("Add", ["logits0", "router.b"], ["logits"]),
        node("Softmax", ["logits"], ["probs"], axis=-1),
        node("TopK", ["probs", "k"], ["top", "ids"], axis=-1),
        node("Shape", ["x"], ["x_shape"]),
        node("ConstantOfShape", ["x_shape"], ["acc0"]),
    ]
    w = "top"
    if renormalize:
        nodes += [
            node("ReduceSum", ["top", LAST], ["top_sum"], keepdims=1),
            node("Div", ["top", "top_sum"], ["w"]),
        ]
        w = "w"
    for e in range(E):
        consts |= {f"e{e}.id": np.array(e), f"e{e}.w1": weight(H, W), f"e{e}.w2": weight(W, H)}
        nodes += [
            node("Equal", ["ids", f"e{e}.id"], [f"e{e}.hit"]),
            node("Cast", [f"e{e}.hit"], [f"e{e}.hitf"], to=onnx.TensorProto.FLOAT),
            node("Mul", [w, f"e{e}.hitf"], [f"e{e}.wk"]),
            node("ReduceSum", [f"e{e}.wk", LAST], [f"e{e}.gate"], keepdims=1),
            node("MatMul", ["x", f"e{e}.w1"], [f"e{e}.h"]),
            node("Relu", [f"e{e}.h"], [f"e{e}.r"]),
            node("MatMul", [f"e{e}.r", f"e{e}.w2"], [f"e{e}.y"]),
            node("Mul", [f"e{e}.y", f"e{e}.gate"], [f"e{e}.out"]),
            node("Add", [f"acc{e}", f"e{e}.out"], [f"acc{e + 1}"]),
        ]
    out = f"acc{E}"
    if shared:
        consts |= {"s.w1": weight(H, 2 * W), "s.w2": weight(2 * W, H), "s.g": weight(H, 1)}
        nodes += [
            node("MatMul", ["x", "s.w1"], ["s.h"]),
            node("Relu", ["s.h"], ["s.r"]),
            node("MatMul", ["s.r", "s.w2"], ["s.y"]),
            node("MatMul", ["x", "s.g"], ["s.logit"]),
            node("Sigmoid", ["s.logit"], ["s.gate"]),
            node("Mul", ["s.y", "s.gate"], ["s.out"]),
            node("Add", [out, "s.out"], ["y"]),
        ]
        out = "y"
    nodes.append(node("MatMul", [out, "head.w"], ["logits_out"]))
    consts["head.w"] = weight(H, 3)
    return model(nodes, {"x": (T, H)}, ["logits_out"], consts)


def fused_block():
    """Router MatMul -> com.microsoft::MoE with interleaved SwiGLU fc1 [E, 2I, H] + biases."""
    consts = {
        "router.w": weight(H, E),
        "fc1": weight(E, 2 * W, H),
        "fc1.b": weight(E, 2 * W),
        "fc2": weight(E, H, W),
        "fc2.b": weight(E, H),
    }
    moe = helper.make_node(
        "MoE",
        ["x", "logits", "fc1", "fc1.b", "fc2", "fc2.b"],
        ["y"],
        name="moe",
        domain="com.microsoft",
        k=K,
        activation_type="swiglu",
        swiglu_fusion=1,
        normalize_routing_weights=1,
    )
    nodes = [node("MatMul", ["x", "router.w"], ["logits"]), moe]
    return model(nodes, {"x": (T, H)}, {"y": (T, H)}, consts, custom_domains=("com.microsoft",))


def only_layer(made):
    work, dep = analyze(made)
    layers = find_layers(dep)
    assert len(layers) == 1
    return work, dep, layers[0]


# ---------------------------------------------------------------------------------------------
# Expert groups
# ---------------------------------------------------------------------------------------------


def test_mixtral_graph_experts_are_router_column_bias_entry_and_their_branch_weights():
    _, _, layer = only_layer(routed_block())
    assert (layer.n_experts, layer.top_k, layer.form, layer.prunable) == (E, K, "per-expert", True)
    assert layer.router_weight == "router.w" and layer.logits == "logits0"
    assert layer.constants == [Space("router.b", 0), Space("router.w", 1)]
    for e, expert in enumerate(layer.experts):
        assert expert.weights == [f"e{e}.w1", f"e{e}.w2"]
        assert len(expert.selectors) == 1 and expert.selectors[0].expert == e
        assert len(expert.merges) == 1
    # the expert axis: logits, probabilities and the router's weight column and bias entry
    spaces = {(s.tensor, s.axis) for s in layer.spaces}
    assert spaces == {
        ("router.w", 1),
        ("router.b", 0),
        ("logits0", 1),
        ("logits", 1),
        ("probs", 1),
    }


def test_qwen_graph_keeps_the_shared_expert_out_of_every_expert():
    _, _, layer = only_layer(routed_block(renormalize=False, shared=True))
    owned = {w for expert in layer.experts for w in expert.weights}
    assert owned == {f"e{e}.w{j}" for e in range(E) for j in (1, 2)}
    assert layer.prunable


def test_fused_moe_experts_are_slices_of_every_stacked_input():
    _, _, layer = only_layer(fused_block())
    assert (layer.form, layer.top_k, layer.prunable) == ("stacked", K, True)
    assert {(s.tensor, s.axis) for s in layer.constants} == {
        ("router.w", 1),
        ("fc1", 0),
        ("fc1.b", 0),
        ("fc2", 0),
        ("fc2.b", 0),
    }


def test_models_without_routers_have_no_expert_layers():
    made = model([node("MatMul", ["x", "w"], ["y"])], {"x": (T, H)}, ["y"], {"w": weight(H, 3)})
    assert expert_counts(made) == []


def test_expert_ids_reaching_an_op_without_rule_block_the_layer():
    made = routed_block()
    made.graph.node.append(node("Add", ["ids", "k"], ["ids_plus"]))
    made.graph.output.append(
        helper.make_tensor_value_info("ids_plus", onnx.TensorProto.INT64, None)
    )
    _, _, layer = only_layer(made)
    assert not layer.prunable
    assert any("expert ids reach Add" in reason for reason in layer.blocked)


# ---------------------------------------------------------------------------------------------
# Removal and the -inf oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("made", "removed"),
    [
        pytest.param(routed_block(), [1, 3], id="mixtral"),
        pytest.param(routed_block(renormalize=False, shared=True), [0, 2], id="qwen-shared"),
        pytest.param(fused_block(), [0, 1], id="fused-MoE"),
    ],
)
def test_removing_experts_equals_masking_their_logits_to_minus_inf(made, removed):
    work, _, layer = only_layer(made)
    removals = {layer.name: np.array(removed)}
    pruned = remove_experts(work, [layer], removals)
    onnx.checker.check_model(pruned)
    assert initializer(pruned, "router.w").shape == (H, E - len(removed))
    inputs = random_inputs(work, seed=1)
    checks = expert_oracle(work, pruned, [layer], removals, inputs, ("cpu",))
    assert all(c.passed for c in checks), [c.line() for c in checks]
    # the oracle can fail: masking other experts than the removed ones does not match
    other = {layer.name: np.setdiff1d(np.arange(E), removed)}
    wrong = run(masked_model(work, [layer], other), inputs)
    got = run(pruned, inputs)
    assert max(np.abs(wrong[k] - got[k]).max() for k in got) > 1e-3


def test_removed_experts_branches_and_weights_are_deleted_and_kept_ids_renumbered():
    work, _, layer = only_layer(routed_block())
    pruned = remove_experts(work, [layer], {layer.name: np.array([0, 2])})
    names = {t.name for t in pruned.graph.initializer}
    assert {"e1.w1", "e3.w2"} <= names and not {"e0.w1", "e0.w2", "e2.w1", "e2.w2"} & names
    equal_constants = sorted(
        int(initializer(pruned, n.input[1])) for n in pruned.graph.node if n.op_type == "Equal"
    )
    assert equal_constants == [0, 1]  # experts 1 and 3 are now numbers 0 and 1
    assert len([n for n in pruned.graph.node if n.op_type == "Equal"]) == 2


def test_removal_refuses_to_leave_fewer_experts_than_top_k():
    work, _, layer = only_layer(routed_block())
    with pytest.raises(BadInput, match=r"leaves 1, fewer than its top-k \(2\)"):
        remove_experts(work, [layer], {layer.name: np.array([0, 1, 2])})
    assert removal_counts([layer], 0.9) == {layer.name: E - K}  # the criteria never ask it


def test_prune_experts_writes_a_verified_model_and_reports_experts_per_layer(tmp_path):
    source = tmp_path / "moe.onnx"
    onnx.save(routed_block(), source)
    result = prune_experts(source, tmp_path / "out.onnx", 0.5, "l2", providers=("cpu",))
    assert result.passed and result.written
    [layer] = result.layers
    assert (layer.before, layer.after, len(layer.removed)) == (E, 2, 2)
    assert [x.experts for x in expert_counts(tmp_path / "out.onnx")] == [2]
    written = {t.name for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    for e in range(E):
        assert ({f"e{e}.w1", f"e{e}.w2"} <= written) == (e not in layer.removed)


def test_prune_experts_refuses_models_without_experts(tmp_path):
    source = tmp_path / "mlp.onnx"
    onnx.save(
        model([node("MatMul", ["x", "w"], ["y"])], {"x": (T, H)}, ["y"], {"w": weight(H, 3)}),
        source,
    )
    with pytest.raises(BadInput, match="no mixture-of-experts layer"):
        prune_experts(source, tmp_path / "out.onnx", 0.5)


def test_diff_reports_experts_before_and_after_on_router_and_stacked_weights(tmp_path):
    from graphprune.diff import diff

    source = tmp_path / "moe.onnx"
    onnx.save(routed_block(), source)
    prune_experts(source, tmp_path / "out.onnx", 0.5, "l2", providers=("cpu",))
    rows = diff(source, tmp_path / "out.onnx").as_dict()["layers"]
    experts = {
        (r["a"] or r["b"])["weight"]: (r["a"] and r["a"]["experts"], r["b"] and r["b"]["experts"])
        for r in rows
    }
    assert experts["router.w"] == (E, 2)
    assert experts["e0.w1"] == (None, None)  # a per-expert weight spans no expert axis


# ---------------------------------------------------------------------------------------------
# Expert-MLP channels
# ---------------------------------------------------------------------------------------------


def test_each_experts_intermediate_channels_are_their_own_group_and_prune_exactly():
    work, dep, layer = only_layer(routed_block())
    groups = expert_mlp_groups(dep, [layer])
    assert sorted(groups.values()) == [f"{layer.name} expert {e}" for e in range(E)]
    group = group_with(dep, "e1.w1", 1)
    assert members(group) == {("e1.w1", 1), ("e1.h", 1), ("e1.r", 1), ("e1.w2", 0)}
    removals = {g: np.array([0, 3]) for g in groups}
    pruned = slice_channels(work, dep, removals)
    assert initializer(pruned, "e2.w2").shape == (W - 2, H)
    checks = oracle(work, pruned, dep, removals, random_inputs(work, 2), ("cpu",))
    assert all(c.passed for c in checks), [c.line() for c in checks]


def test_fused_moe_intermediate_channel_owns_its_interleaved_gate_and_up_rows():
    work, dep, layer = only_layer(fused_block())
    group = group_with(dep, "fc2", 2)
    assert members(group) == {("fc1", 1), ("fc1.b", 1), ("fc2", 2)}
    # channel i owns rows 2i (gate) and 2i + 1 (up) of fc1
    assert list(group.labels[Space("fc1", 1)]) == list(np.repeat(np.arange(W), 2))
    assert expert_mlp_groups(dep, [layer]) == {group.id: f"{layer.name} all experts"}
    removals = {group.id: np.array([1, 4])}
    pruned = slice_channels(work, dep, removals)
    assert initializer(pruned, "fc1").shape == (E, 2 * (W - 2), H)
    checks = oracle(work, pruned, dep, removals, random_inputs(work, 3), ("cpu",))
    assert all(c.passed for c in checks), [c.line() for c in checks]


def test_stacked_experts_each_lose_their_own_channels_exactly():
    from graphprune.passes.expert_channels import (
        per_expert_scores,
        prune_expert_channels,
        zero_expert_channels,
    )

    work, dep, layer = only_layer(fused_block())
    group = group_with(dep, "fc2", 2)
    constants = dep.index.constants
    fc1, fc2 = initializer(work, "fc1"), initializer(work, "fc2")
    scores = per_expert_scores(group, layer, constants)
    e, i = 2, 3  # expert 2's channel 3: its gate and up rows of fc1 and bias, its fc2 column
    by_hand = (fc1[e, 2 * i : 2 * i + 2] ** 2).sum() + (fc2[e, :, i] ** 2).sum()
    by_hand += (initializer(work, "fc1.b")[e, 2 * i : 2 * i + 2] ** 2).sum()
    np.testing.assert_allclose(scores[e, i], by_hand, rtol=1e-5)
    removed = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])  # a different pair per expert
    jobs = [(group, layer, removed)]
    pruned = prune_expert_channels(work, jobs, constants)
    assert initializer(pruned, "fc1").shape == (E, 2 * (W - 2), H)
    np.testing.assert_array_equal(initializer(pruned, "fc2")[1], fc2[1][:, [0, 3, 4]])
    inputs = random_inputs(work, seed=5)
    expected = run(zero_expert_channels(work, jobs, constants), inputs)
    got = run(pruned, inputs)
    np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-5, atol=1e-5)
    shifted = [(group, layer, np.roll(removed, 1, axis=0))]  # the wrong experts' channels
    wrong = run(zero_expert_channels(work, shifted, constants), inputs)
    assert np.abs(wrong["y"] - got["y"]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def fake_layer(name: str, rows: np.ndarray, top_k: int) -> tuple[MoELayer, np.ndarray]:
    """A layer whose router weight `{name}.w` is [E, hidden] with experts on axis 0."""
    n = len(rows)
    space = Space(f"{name}.w", 0)
    layer = MoELayer(
        name, 0, space.tensor, "", n, top_k, [space], [Expert(e) for e in range(n)], []
    )
    layer.constants = [space]
    return layer, np.asarray(rows, dtype=np.float32)


def test_stun_clusters_by_router_rows_under_one_global_threshold():
    """By hand. Layer a (k 2): rows (0,0) (1,0) (10,0) (10,3) (10,1); pairwise distances
    1, 10, 10.44, 10.05, 9, 9.49, 9.06, 3, 1, 2, mean 6.5035. Average linkage: (0,1) at 1 and
    (2,4) at 1 (tie: lower pair first), then ({2,4},3) at (3+2)/2 = 2.5; stop at 2 clusters.
    Normalized heights 0.154, 0.154, 0.384. Layer b (k 1): rows (0,0) (0,2) (0,4) (0,6),
    mean distance 20/6: (0,1) and (2,3) at 2 -> 0.6, then at 4 -> 1.2. Budget
    floor(0.5 * 9) = 4 merges: a's three and b's first (b's second ties at 0.6; ties go to
    the earlier layer). Representatives: {0,1} ties -> 0; {2,3,4}: mean (10, 4/3) is closest
    to expert 4 (0.33 vs 1.33, 1.67); in b, {0,1} ties -> 0."""
    a, a_rows = fake_layer("a", [[0, 0], [1, 0], [10, 0], [10, 3], [10, 1]], top_k=2)
    b, b_rows = fake_layer("b", [[0, 0], [0, 2], [0, 4], [0, 6]], top_k=1)
    d = distances(a_rows.astype(float), None, 0.0)
    mean = np.mean([1, 10, 109**0.5, 101**0.5, 9, 90**0.5, 82**0.5, 3, 1, 2])
    np.testing.assert_allclose(d[0, 1], 1 / mean, rtol=1e-6)
    heights = [h for h, _, _ in agglomerate(d, 2)]
    np.testing.assert_allclose(heights, [1 / mean, 1 / mean, 2.5 / mean], rtol=1e-6)
    context = ExpertContext({"a.w": a_rows, "b.w": b_rows})
    selection = Stun().select([a, b], context, 0.5)
    assert {k: list(v) for k, v in selection.removed.items()} == {"a": [1, 2, 3], "b": [1]}
    assert selection.clusters["a"] == [[0, 1], [4, 2, 3]]


def test_stun_coselection_pulls_experts_the_router_picks_together():
    counts, co = np.array([4, 4, 4]), np.array([[4, 4, 0], [4, 4, 1], [0, 1, 4]])
    rate = coselection_rate(counts, co)
    np.testing.assert_allclose(rate[0, 1], 4 / (4 + 4 - 4))
    np.testing.assert_allclose(rate[1, 2], 1 / (4 + 4 - 1))
    rows = np.array([[0.0, 0], [0, 3], [0, 2.9]])  # by router rows alone, 1 and 2 are closest
    layer, rows32 = fake_layer("c", rows, top_k=1)
    context = ExpertContext({"c.w": rows32}, {"c": RouterStats(counts, co, 10)})
    context.options["stun_lambda"] = 0.0
    assert list(Stun().select([layer], context, 0.34).removed["c"]) == [2]
    context.options["stun_lambda"] = 2.0  # co-selection of 0 and 1 now dominates
    assert list(Stun().select([layer], context, 0.34).removed["c"]) == [1]


def test_stun_can_average_each_cluster_into_its_kept_expert(tmp_path):
    source, out = tmp_path / "moe.onnx", tmp_path / "out.onnx"
    made = routed_block()
    onnx.save(made, source)
    result = prune_experts(source, out, 0.5, "stun", providers=("cpu",), average_below=3)
    assert result.passed  # the oracle masks the averaged model: removal stays exact
    [layer] = result.layers
    assert layer.after == 2 and len(layer.clusters) == 2
    pruned = onnx.load(out)
    for cluster in layer.clusters:
        for name in ("w1", "w2"):
            mean = np.mean([initializer(made, f"e{e}.{name}") for e in cluster], axis=0)
            kept = initializer(pruned, f"e{cluster[0]}.{name}")
            np.testing.assert_allclose(kept, mean, rtol=1e-6)


def test_stun_averages_stacked_expert_slices_too(tmp_path):
    source, out = tmp_path / "moe.onnx", tmp_path / "out.onnx"
    made = fused_block()
    onnx.save(made, source)
    result = prune_experts(source, out, 0.5, "stun", providers=("cpu",), average_below=3)
    assert result.passed
    [layer] = result.layers
    kept = sorted(c[0] for c in layer.clusters)
    pruned = onnx.load(out)
    for cluster in layer.clusters:
        for name in ("fc1", "fc2", "fc1.b"):
            mean = initializer(made, name)[cluster].mean(axis=0)
            got = initializer(pruned, name)[kept.index(cluster[0])]
            np.testing.assert_allclose(got, mean, rtol=1e-6)


def test_router_statistics_count_top_k_choices_of_the_logits():
    work, _, layer = only_layer(routed_block())
    inputs = random_inputs(work, seed=4)
    stats = router_statistics(work, [layer], [inputs, inputs])[layer.name]
    logits = inputs["x"] @ initializer(work, "router.w") + initializer(work, "router.b")
    top = np.argsort(-logits, axis=1)[:, :K]
    expected = np.bincount(top.ravel(), minlength=E) * 2
    assert stats.tokens == 2 * T and list(stats.counts) == list(expected)
    assert np.array_equal(np.diag(stats.coactivation), stats.counts)
    assert stats.coactivation.sum() == 2 * T * K * K


# ---------------------------------------------------------------------------------------------
# Real exports: every MoE form of the zoo, both exporters
# ---------------------------------------------------------------------------------------------

MOE_ZOO = ["moe_mixtral", "moe_mixtral_mask", "moe_qwen", "moe_dense", "moe_einsum", "moe_fused"]
MOE_ZOO += ["mixtral_tiny_hf", "qwen2moe_tiny_hf"]


@pytest.mark.zoo
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", MOE_ZOO)
def test_zoo_moe_loses_half_its_experts_exactly(name, exporter, tmp_path):
    from models.zoo import ZOO, example_inputs, export

    if not ZOO[name].available():
        pytest.skip(f"{name} needs {ZOO[name].missing_modules()}")
    source = export(name, exporter)
    layers = expert_counts(source)
    assert len(layers) == 2 and all(x.prunable and x.experts == 4 for x in layers)
    inputs = example_inputs(ZOO[name])
    for criterion in ("stun", "frequency", "l2"):
        out = tmp_path / f"{criterion}.onnx"
        mlp = 0.25 if criterion == "l2" and not name.endswith("_hf") else 0.0
        result = prune_experts(
            source, out, 0.5, criterion, inputs=inputs, providers=("cpu",), expert_mlp_ratio=mlp
        )
        assert result.passed, result.lines()
        assert [x.experts for x in expert_counts(out)] == [2, 2]
        assert result.after.params < result.before.params
        assert result.expert_mlp_groups > 0 or not mlp
