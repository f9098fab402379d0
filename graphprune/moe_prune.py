"""Expert pruning, stage by stage: load -> analyze (graphprune.moe) -> router statistics ->
select (an expert criterion) -> remove experts -> -inf oracle -> [expert-MLP channels ->
zero-then-prune oracle] -> write. `prune_experts` is the whole job; `expert_counts` lists the
MoE layers of a model (for inspect and diff).

The oracle for experts: removing expert e must equal masking its router logit to -inf in the
original graph. `masked_model` adds a constant [E] vector (0 for kept experts, -inf for removed
ones) to each router's output, and the pruned model must reproduce its outputs to fp32
round-off. -inf, not a large negative number: softmax then gives exactly 0 (exp(-inf) = 0,
and at least top-k >= 1 finite logits remain, so no row is all -inf and no NaN appears),
which is what removal computes; -1e9 would leave exp(-1e9 - max) = 0 as well in fp32, but
-inf states the intent and also covers graphs that compare logits before any softmax.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from graphprune import outputs
from graphprune.depgraph import DepGraph
from graphprune.edit import ConstantStore
from graphprune.errors import BadInput
from graphprune.moe import (
    EXPERT_CRITERIA,
    ExpertContext,
    ExpertSelection,
    MoELayer,
    RouterStats,
    find_layers,
)
from graphprune.ops import Role, WeightValues
from graphprune.pipeline import _check_paths, analyze, analyze_model, compact, smallest_ratio
from graphprune.report import Summary, count_macs, summarize
from graphprune.verify import (
    ATOL,
    RTOL,
    Check,
    check_feeds,
    equivalence_checks,
    random_inputs,
    run,
)
from graphprune.verify import oracle as channel_oracle

Feeds = Mapping[str, np.ndarray]


@dataclass
class LayerExperts:
    """One MoE layer as inspect and diff show it."""

    name: str
    experts: int
    top_k: int
    form: str  # "per-expert", "stacked" (fused ops included) or "router-only"
    prunable: bool
    blocked: str = ""  # the first reason, when not prunable
    router: str = ""  # the router weight

    def as_dict(self) -> dict:
        return asdict(self)


def describe(layers: Sequence[MoELayer]) -> list[LayerExperts]:
    return [
        LayerExperts(
            layer.name,
            layer.n_experts,
            layer.top_k,
            layer.form,
            layer.prunable,
            layer.blocked[0] if layer.blocked else "",
            layer.router_weight,
        )
        for layer in layers
    ]


def expert_counts(model: str | Path | onnx.ModelProto) -> list[LayerExperts]:
    """The MoE layers of `model` (a path or a loaded model, left unchanged): experts, top-k,
    form, and whether the experts can be removed. Empty for models without experts."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        analysis = analyze_model(copy)
    else:
        analysis = analyze(model)
    return describe(find_layers(analysis.dep))


# ---------------------------------------------------------------------------------------------
# Router statistics (calibration) and the -inf oracle
# ---------------------------------------------------------------------------------------------


def router_statistics(
    model: onnx.ModelProto, layers: Sequence[MoELayer], batches: Sequence[Feeds]
) -> dict[str, RouterStats]:
    """Top-k selections and co-selections of every layer's router over `batches`, ranking what
    the layer's TopK ranks (exposed as extra outputs of a copy of `model`)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for layer in layers:
        if layer.scores.tensor not in outputs:
            outputs.add(layer.scores.tensor)
            probe.graph.output.append(helper.make_empty_tensor_value_info(layer.scores.tensor))
    del probe.graph.value_info[:]
    stats = {
        layer.name: RouterStats(
            np.zeros(layer.n_experts, np.int64),
            np.zeros((layer.n_experts, layer.n_experts), np.int64),
            0,
        )
        for layer in layers
    }
    for feeds in batches:
        values = run(probe, feeds)
        for layer in layers:
            scores = np.moveaxis(values[layer.scores.tensor], layer.scores.axis, -1)
            scores = scores.reshape(-1, layer.n_experts)
            k = min(layer.top_k, layer.n_experts)
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            chosen = np.zeros(scores.shape, dtype=np.int64)
            np.put_along_axis(chosen, top, 1, axis=1)
            entry = stats[layer.name]
            entry.counts += chosen.sum(axis=0)
            entry.coactivation += chosen.T @ chosen
            entry.tokens += len(scores)
    return stats


def masked_model(
    model: onnx.ModelProto, layers: Sequence[MoELayer], removals: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy of `model` whose routers' logits are -inf for the removed experts (see the module
    docstring): Add(logits, mask) right after each router, read by every former reader."""
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    del masked.graph.value_info[:]
    store = ConstantStore(masked)
    inserted: dict[int, onnx.NodeProto] = {}
    renamed: dict[str, str] = {}
    for layer in layers:
        removed = np.asarray(removals.get(layer.name, ()), dtype=np.int64)
        if not len(removed):
            continue
        mask = np.zeros(layer.n_experts, dtype=_float_type(model, layer))
        mask[removed] = -np.inf
        mask_name = store.add(f"{layer.logits}_expert_mask", mask)
        masked_name = f"{mask_name}_applied"
        inserted[layer.router] = helper.make_node(
            "Add", [layer.logits, mask_name], [masked_name], name=masked_name
        )
        renamed[layer.logits] = masked_name
    nodes = list(masked.graph.node)
    del masked.graph.node[:]
    for position, node in enumerate(nodes):
        if position not in inserted:
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
        masked.graph.node.append(node)
        if position in inserted:
            masked.graph.node.append(inserted[position])
    for output in masked.graph.output:
        if output.name in renamed:
            raise BadInput(f"router logits {output.name} are a graph output")
    return masked


def _float_type(model: onnx.ModelProto, layer: MoELayer) -> type:
    for tensor in model.graph.initializer:
        if tensor.name == layer.router_weight:
            return helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.float32


def expert_oracle(
    model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    layers: Sequence[MoELayer],
    removals: Mapping[str, np.ndarray],
    inputs: Feeds,
    providers: tuple[str, ...] = ("cpu", "cuda"),
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[Check]:
    """The pruned model against the original with the removed experts' logits at -inf."""
    reference_model = masked_model(model, layers, removals)
    return equivalence_checks(
        "expert -inf oracle", reference_model, pruned, inputs, providers, rtol, atol
    )


# ---------------------------------------------------------------------------------------------
# Expert MLP channels (scope expert-mlp)
# ---------------------------------------------------------------------------------------------


def expert_mlp_groups(dep: DepGraph, layers: Sequence[MoELayer]) -> dict[str, str]:
    """Channel groups inside experts, by group id: "<layer> expert <e>" when every constant of
    the group belongs to expert e's branch; "<layer> all experts" when the group runs along a
    non-expert axis of stacked [E, ...] weights (channel i of every expert goes together)."""
    owner: dict[str, str] = {}
    for layer in layers:
        for expert in layer.experts:
            for weight in expert.weights:
                owner[weight] = f"{layer.name} expert {expert.index}"
        for space in layer.stacked_spaces:
            owner[space.tensor] = f"{layer.name} all experts"
    stacked_axes = {(s.tensor, s.axis) for layer in layers for s in layer.stacked_spaces}
    groups = {}
    for group in dep.groups:
        places = {owner.get(space.tensor) for space in group.roles}
        on_expert_axis = any((s.tensor, s.axis) in stacked_axes for s in group.roles)
        # made and read inside the expert: an intermediate channel, not the hidden size
        inside = {Role.IN, Role.OUT} <= set(group.roles.values())
        if len(places) == 1 and None not in places and not on_expert_axis and inside:
            groups[group.id] = places.pop()
    return groups


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerResult:
    name: str
    form: str
    top_k: int
    before: int
    after: int
    removed: list[int]
    clusters: list[list[int]] | None = None  # STUN: kept expert first, then the experts it covers


@dataclass
class ExpertPruneResult:
    criterion: str
    expert_ratio: float
    layers: list[LayerResult]
    before: Summary
    after: Summary
    checks: list[Check]
    expert_mlp_groups: int = 0  # channel groups pruned inside experts (scope expert-mlp)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    written: bool = False

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["checks"] = [c.as_dict() for c in self.checks]
        return data | {"passed": self.passed}

    def lines(self) -> list[str]:
        lines = [
            f"{layer.name}: experts {layer.before} -> {layer.after} (top-{layer.top_k}, "
            f"{layer.form}), removed {layer.removed}"
            for layer in self.layers
        ]
        return lines + [c.line() for c in self.checks] + self.notes


def prune_experts(
    source: str | Path,
    destination: str | Path,
    expert_ratio: float = 0.25,
    criterion: str = "stun",
    calib_inputs: Feeds | Sequence[Feeds] | None = None,
    verify: bool = True,
    providers: tuple[str, ...] = ("cpu", "cuda"),
    seed: int = 0,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    inputs: Feeds | None = None,
    stun_lambda: float = 0.0,
    average_below: int = 0,
    expert_mlp_ratio: float = 0.0,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> ExpertPruneResult:
    """Remove `expert_ratio` of the experts of `source`'s MoE layers and write `destination`
    (only if every oracle passes).

    criterion: "stun" (router-row clustering, global budget; co-selection with `stun_lambda`),
    "frequency" (least chosen on `calib_inputs`), "l2" (smallest weights); the baselines remove
    floor(ratio * E) per layer. No layer goes below its top-k. `average_below` > 0 (STUN):
    layers left with fewer experts than that average each cluster's weights into its kept
    expert. `expert_mlp_ratio` > 0 then also prunes that share of each expert's intermediate
    channels (L2), checked by the zero-then-prune oracle. The oracles run on `inputs` (else
    random ones at `input_shapes`); calibration defaults to the same inputs.
    """
    import graphprune.passes  # noqa: F401  (registers the expert criteria)
    from graphprune.passes.remove_experts import check_removals, remove_experts

    if criterion not in EXPERT_CRITERIA:
        known = ", ".join(sorted(EXPERT_CRITERIA))
        raise BadInput(f"unknown expert criterion '{criterion}' (known: {known})")
    if not 0 <= expert_ratio < 1 or not 0 <= expert_mlp_ratio < 1:
        raise BadInput("expert ratio and expert-MLP ratio must lie in [0, 1)")
    _check_paths(source, destination, {"--calib": calib_inputs})
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        seconds[stage] = round(now - clock[0], 3)
        clock[0] = now

    analysis = analyze(source)
    work = analysis.work
    layers = find_layers(analysis.dep)
    if not layers:
        barriers = Counter(analysis.dep.missing_rules).most_common(3)
        raise BadInput(
            f"{source} has no mixture-of-experts layer (router MatMul -> TopK)"
            + ("; ops without a rule: " + ", ".join(f"{op} x{n}" for op, n in barriers))
            * bool(barriers)
        )
    lap("load+analyze")
    if inputs is None:
        inputs = random_inputs(work, seed, input_shapes)
    check_feeds(work, inputs, source)
    notes = []
    scorer = EXPERT_CRITERIA[criterion]()
    stats = None
    if scorer.needs_data or stun_lambda:
        batches = _batches(calib_inputs, inputs)
        if calib_inputs is None:
            notes.append("router statistics from the oracle inputs (no calibration data given)")
        stats = router_statistics(work, [x for x in layers if x.prunable], batches)
        lap("calibrate")
    context = ExpertContext(analysis.dep.index.constants, stats, {"stun_lambda": stun_lambda})
    selection = scorer.select(layers, context, expert_ratio)
    removed_experts = sum(len(units) for units in selection.removed.values())
    if expert_ratio > 0 and not removed_experts and not expert_mlp_ratio:

        def removes_an_expert(ratio: float) -> bool:
            return any(len(u) for u in scorer.select(layers, context, ratio).removed.values())

        raise BadInput(no_expert_removed(analysis.dep, layers, expert_ratio, removes_an_expert))
    check_removals(layers, selection.removed)
    if average_below:
        _average_clusters(work, layers, selection, average_below)
    lap("select")
    pruned = compact(remove_experts(work, layers, selection.removed), analysis.constant_names)
    lap("rewrite")
    shapes = {name: value.shape for name, value in inputs.items()}
    before = replace(analysis.original, macs=count_macs(work, shapes))
    checks = []
    if verify:
        checks = expert_oracle(
            work, pruned, layers, selection.removed, inputs, providers, rtol, atol
        )
        lap("verify")
    mlp_groups = 0
    if expert_mlp_ratio:
        pruned, mlp_checks, mlp_groups = _prune_expert_mlp(
            pruned, expert_mlp_ratio, inputs, providers, verify, rtol, atol
        )
        checks += mlp_checks
        lap("expert-mlp")
        if not mlp_groups:
            why = (
                f"--ratio {expert_mlp_ratio:g} (scope expert-mlp) removes nothing: no channel "
                "group inside an expert is prunable or the ratio rounds to zero channels in each"
            )
            if not removed_experts:
                raise BadInput(why)
            notes.append(why)
    result = ExpertPruneResult(
        criterion=criterion,
        expert_ratio=expert_ratio,
        layers=_layer_results(layers, selection),
        before=before,
        after=summarize(pruned, None, shapes),
        checks=checks,
        expert_mlp_groups=mlp_groups,
        notes=notes,
        seconds=seconds,
    )
    del analysis, work
    gc.collect()
    if result.passed:
        result.after.bytes = outputs.write_model(pruned, destination, check=True)
        result.written = True
    lap("write")
    return result


def no_expert_removed(
    dep: DepGraph, layers: Sequence[MoELayer], ratio: float, removes_an_expert
) -> str:
    """One line saying why `ratio` > 0 removes no expert: every layer blocked (the commonest
    reason, and the ops without a rule), or the ratio rounds to zero experts everywhere (the
    least ratio that removes one, found with `removes_an_expert`)."""
    where = f"--expert-ratio {ratio:g} removes nothing ({len(layers)} MoE layers"
    prunable = [layer for layer in layers if layer.prunable]
    if not prunable:
        reasons = Counter(layer.blocked[0] for layer in layers)
        reason, count = reasons.most_common(1)[0]
        line = f"{where}): every layer is blocked; most often {reason!r} ({count} of {len(layers)})"
        barriers = Counter(dep.missing_rules).most_common(3)
        if barriers:
            line += "; ops without a rule: " + ", ".join(f"{op} x{n}" for op, n in barriers)
        return line
    smallest = smallest_ratio(removes_an_expert)
    line = f"{where}, {len(prunable)} prunable): the ratio rounds to zero experts in every layer"
    if smallest is None:
        return line + "; no ratio below 1 removes one (no layer may go below its top-k)"
    return line + f"; the smallest ratio that removes an expert is {smallest:g}"


def _batches(calib_inputs, inputs: Feeds) -> list[Feeds]:
    if calib_inputs is None:
        return [inputs]
    if isinstance(calib_inputs, Mapping):
        return [calib_inputs]
    return list(calib_inputs)


def _layer_results(layers: Sequence[MoELayer], selection: ExpertSelection) -> list[LayerResult]:
    results = []
    for layer in layers:
        removed = [int(e) for e in selection.removed.get(layer.name, [])]
        clusters = selection.clusters.get(layer.name)
        results.append(
            LayerResult(
                layer.name,
                layer.form,
                layer.top_k,
                layer.n_experts,
                layer.n_experts - len(removed),
                removed,
                [[int(e) for e in c] for c in clusters] if clusters else None,
            )
        )
    return results


def _average_clusters(
    work: onnx.ModelProto, layers: Sequence[MoELayer], selection: ExpertSelection, below: int
) -> None:
    """Layers left with fewer than `below` experts: each kept expert's MLP weights become the
    mean of its cluster's (stacked slices, or per-expert tensors matched by position in the
    branch); the router rows stay the kept experts' own. Applied to `work` itself, before the
    oracle's reference is built, so the oracle still checks the removal exactly."""
    store = ConstantStore(work)
    for layer in layers:
        clusters = selection.clusters.get(layer.name)
        if not clusters or len(clusters) >= below:
            continue
        for cluster in clusters:
            if len(cluster) < 2:
                continue
            keep, members = cluster[0], list(cluster)
            for space in layer.stacked_spaces:
                value = store.get(space.tensor).copy()
                moved = np.moveaxis(value, space.axis, 0)
                moved[keep] = moved[members].mean(axis=0)
                store.set(space.tensor, value)
            kept_weights = _ordered_weights(work, layer.experts[keep].weights)
            others = [_ordered_weights(work, layer.experts[e].weights) for e in members]
            for i, name in enumerate(kept_weights):
                tensors = [store.get(ws[i]) for ws in others if len(ws) == len(kept_weights)]
                if all(t.shape == tensors[0].shape for t in tensors):
                    store.set(name, np.mean(tensors, axis=0).astype(tensors[0].dtype))


def _ordered_weights(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """An expert's weights in the order their first reader appears in the graph."""
    first = {}
    for position, node in enumerate(model.graph.node):
        for name in node.input:
            if name in names:
                first.setdefault(name, position)
    return sorted(names, key=lambda n: first.get(n, -1))


def _prune_expert_mlp(
    model: onnx.ModelProto,
    ratio: float,
    inputs: Feeds,
    providers: tuple[str, ...],
    verify: bool,
    rtol: float,
    atol: float,
) -> tuple[onnx.ModelProto, list[Check], int]:
    """Prune `ratio` of every expert's intermediate channels (L2), each expert on its own:
    per-expert branches through the channel groups (zero-then-prune oracle), stacked [E, ...]
    weights through `passes.expert_channels` (its per-expert zero-then-prune oracle)."""
    from graphprune.allocate import allocate
    from graphprune.passes import ScoreContext, importance
    from graphprune.passes.expert_channels import (
        lowest_per_expert,
        per_expert_scores,
        prune_expert_channels,
        zero_expert_channels,
    )
    from graphprune.passes.slice_channels import slice_channels

    checks, pruned_groups = [], 0
    analysis = analyze_model(model)
    layers = {layer.name: layer for layer in find_layers(analysis.dep)}
    wanted = expert_mlp_groups(analysis.dep, list(layers.values()))
    own = [g for g in analysis.dep.groups if g.prunable and g.id in wanted]
    branch_groups = [g for g in own if not wanted[g.id].endswith(" all experts")]
    if branch_groups:
        scorer, context = importance("l2"), ScoreContext(WeightValues(analysis.dep.index))
        scores = {g.id: scorer.score(g, context) for g in branch_groups}
        removals = allocate(branch_groups, scores, ratio)
        model = compact(
            slice_channels(analysis.work, analysis.dep, removals), analysis.constant_names
        )
        if verify:
            checks += _named(
                channel_oracle(
                    analysis.work, model, analysis.dep, removals, inputs, providers, rtol, atol
                ),
                "expert-MLP zero-then-prune oracle",
            )
        pruned_groups += len(removals)
        analysis = analyze_model(model)
        layers = {layer.name: layer for layer in find_layers(analysis.dep)}
        wanted = expert_mlp_groups(analysis.dep, list(layers.values()))
    stacked = [
        g
        for g in analysis.dep.groups
        if g.prunable and wanted.get(g.id, "").endswith(" all experts")
    ]
    constants = analysis.dep.index.constants
    jobs = []
    for group in stacked:
        layer = layers[wanted[group.id].removesuffix(" all experts")]
        removed = lowest_per_expert(per_expert_scores(group, layer, constants), ratio)
        if removed.shape[1]:
            jobs.append((group, layer, removed))
    if jobs:
        model = compact(
            prune_expert_channels(analysis.work, jobs, constants), analysis.constant_names
        )
        if verify:
            reference = zero_expert_channels(analysis.work, jobs, constants)
            what = "stacked expert-MLP zero-then-prune oracle"
            checks += equivalence_checks(what, reference, model, inputs, providers, rtol, atol)
        pruned_groups += len(jobs)
    return model, checks, pruned_groups


def _named(checks: list[Check], what: str) -> list[Check]:
    for check in checks:
        check.what = what
    return checks
