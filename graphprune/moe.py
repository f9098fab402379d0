"""Analyze mixture-of-experts layers: which tensors, constants and nodes each expert owns.

An MoE layer has a **router**: a MatMul/Gemm with a constant weight whose output axis (the
*expert axis*, size E) reaches a TopK (or the router input of a fused com.microsoft::MoE /
QMoE). Removing expert e must act as if its router logit were -inf in the original graph: the
expert is never chosen, the softmax and the top-k renormalize over the others, and the expert's
output never reaches the sum. That is the oracle (`masked_model`), and it is not the channel
table's zero-then-prune semantics: zeroing a router column sets the logit to 0, not -inf. So
the expert axis is traced here with its own rules, on top of the channel dependency graph:

1. **The expert axis**: starting from each TopK's input axis, a connected component over the
   channel graph's identity links (elementwise ops, broadcasts, Transpose, Unsqueeze, batched
   MatMul axes) plus the expert rules below. Every constant in it is cut on its axis (the router
   weight's column and bias entry, stacked [E, ...] expert weights, a fused op's [E, ...]
   inputs); every size constant the channel graph attached to it (Reshape/Expand targets) and
   every OneHot depth is rewritten.
2. **Expert ids**: TopK's indices hold expert numbers, not expert-axis positions. Through
   Cast/Reshape/(Un)squeeze/Flatten they may reach: Equal with a constant (a **selector**:
   "this token chose expert c"), Gather/GatherND/GatherElements/ScatterElements (their data's
   indexed axis joins the component: stacked weights gathered per token, a dense gate scattered
   from the top-k), and OneHot (its new axis joins). Anything else blocks the layer.
3. **Per-expert branches** (one module per expert): each selector's descendants lead to a
   **merge**, the first Add/Sum/ScatterND(add)/ScatterElements(add) with an input that does not
   depend on the selector (the running sum, the accumulator). Removing the expert replaces the
   merge's output by its accumulator; everything only the branch used (its MLP weights) dies.
   Kept experts' selector constants are renumbered.

Expert-axis rules (reductions over the axis, an Einsum summing it away, softmax along it,
zeros_like via Shape) hold only under the -inf semantics, which is why they live here and not in
the channel table (`graphprune.ops`), whose rules promise zero-then-prune equivalence.
"""

from __future__ import annotations

import ast
import math
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx

from graphprune.depgraph import DepGraph
from graphprune.edit import ConstantStore
from graphprune.graph import GraphIndex, all_inputs, attribute, node_label
from graphprune.ops import Space, einsum_labels

ID_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
EXPERT_REDUCTIONS = {"ReduceSum", "ReduceMax"}  # a removed expert adds 0 / is never the max
MERGE_OPS = {"Add", "Sum", "ScatterND", "ScatterElements"}
FUSED_MOE_OPS = {"MoE", "QMoE"}


@dataclass(frozen=True)
class DepthFix:
    """A scalar or 1-element integer constant (OneHot depth) = new size of `space` + `extra`."""

    node: int
    input_index: int
    space: Space
    extra: int = 0

    @property
    def spaces(self) -> tuple[Space, ...]:
        return (self.space,)

    def apply(self, model: onnx.ModelProto, store: ConstantStore, size, kept) -> None:
        node = model.graph.node[self.node]
        name = store.private_copy(node, self.input_index)
        value = store.get(name)
        store.set(name, np.full_like(value, size(self.space) + self.extra))


@dataclass(frozen=True)
class Selector:
    """Input `input_index` of node `node` is a constant holding expert `expert`'s number."""

    node: int
    input_index: int
    expert: int


@dataclass(frozen=True)
class Merge:
    """Node `node` adds one expert's output to the running sum held by input `accumulator`."""

    node: int
    accumulator: int


@dataclass
class Expert:
    index: int  # its position on the router's output axis
    selectors: list[Selector] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)  # where its output joins the sum
    weights: list[str] = field(default_factory=list)  # constants only its branch reads


@dataclass
class MoELayer:
    """One router and its experts."""

    name: str  # module path from weight or node names
    router: int  # position of the router MatMul/Gemm
    router_weight: str
    logits: str  # the router's output; its last axis is the expert axis
    n_experts: int
    top_k: int
    spaces: list[Space]  # every expert-axis space (constants are cut, activations shrink)
    experts: list[Expert]
    fixes: list  # size constants that encode E
    blocked: list[str] = field(default_factory=list)
    constants: list[Space] = field(default_factory=list)  # the constant spaces among `spaces`
    scores: Space | None = None  # what the top-k ranks (TopK's input, a fused op's logits)

    @property
    def prunable(self) -> bool:
        return not self.blocked

    @property
    def form(self) -> str:
        """How the experts are stored: "per-expert" (one branch each, found by selectors),
        "stacked" ([E, ...] weights, fused ops included) or "router-only"."""
        if any(e.merges for e in self.experts):
            return "per-expert"
        return "stacked" if self.stacked_spaces else "router-only"

    @property
    def stacked_spaces(self) -> list[Space]:
        """Constant expert-axis spaces other than the router's (stacked expert weights)."""
        return [s for s in self.constants if s.tensor != self.router_weight]

    def expert_slices(self, expert: int) -> list[tuple[str, int | None]]:
        """What removing `expert` deletes: (constant, axis) slices at index `expert`, and
        (constant, None) for whole constants only its branch reads."""
        return [(s.tensor, s.axis) for s in self.constants] + [
            (w, None) for w in self.experts[expert].weights
        ]


# ---------------------------------------------------------------------------------------------
# Expert-axis rules: run once per node, like the channel table, into an ExpertAxis sink.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Sink:
    index: GraphIndex
    edges: dict[Space, set[Space]] = field(default_factory=lambda: defaultdict(set))
    touched: dict[int, set[Space]] = field(default_factory=lambda: defaultdict(set))
    ids: dict[str, Space] = field(default_factory=dict)  # expert-id tensor -> axis it indexes
    topk: dict[Space, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    selectors: dict[Space, list[Selector]] = field(default_factory=lambda: defaultdict(list))
    fixes: list = field(default_factory=list)
    blocks: dict[Space, list[str]] = field(default_factory=lambda: defaultdict(list))

    def link(self, position: int, a: Space, b: Space) -> None:
        self.edges[a].add(b)
        self.edges[b].add(a)
        self.touched[position].update((a, b))

    def touch(self, position: int, space: Space) -> None:
        self.touched[position].add(space)


def _axis(index: GraphIndex, name: str, axis: int) -> Space | None:
    rank = index.rank(name)
    return None if rank is None else Space(name, axis % rank)


def _run_rules(index: GraphIndex) -> _Sink:
    sink = _Sink(index)
    for position, node in enumerate(index.model.graph.node):
        if node.domain == "com.microsoft" and node.op_type in FUSED_MOE_OPS:
            _fused_moe(sink, position, node)
        elif node.domain in ("", "ai.onnx"):
            if any(name in sink.ids for name in node.input):
                _id_reader(sink, position, node)
            else:
                _expert_axis_op(sink, position, node)
    return sink


def _expert_axis_op(sink: _Sink, position: int, node: onnx.NodeProto) -> None:
    index, op = sink.index, node.op_type
    x = node.input[0] if node.input else ""
    if op in ("Softmax", "LogSoftmax") and index.opset >= 13:
        a, b = _axis(index, x, attribute(node, "axis", -1)), _axis(index, node.output[0], -1)
        if a is not None and b is not None:
            sink.link(position, a, Space(node.output[0], a.axis))
    elif op == "TopK":
        space = _axis(index, x, attribute(node, "axis", -1))
        k = index.const(node.input[1]) if len(node.input) > 1 else attribute(node, "k")
        if space is None or k is None:
            return
        sink.touch(position, space)
        sink.topk[space].append((position, int(np.asarray(k).reshape(-1)[0])))
        if len(node.output) > 1 and node.output[1]:
            sink.ids[node.output[1]] = space
    elif op == "ArgMax":
        space = _axis(index, x, attribute(node, "axis", 0))
        if space is not None:
            sink.touch(position, space)
            sink.ids[node.output[0]] = space
    elif op in EXPERT_REDUCTIONS:
        axes = _reduce_axes(index, node)
        for axis in axes or ():
            sink.touch(position, Space(x, axis))
    elif op == "Shape":
        _zeros_like(sink, position, node)
    elif op == "Einsum":
        _einsum_sum(sink, position, node)


def _einsum_sum(sink: _Sink, position: int, node: onnx.NodeProto) -> None:
    """An Einsum that sums a label away (`bseh,bse->bsh`: expert outputs times their gates) is
    a reduction over that axis: a removed expert's gate is 0 under -inf, so its term adds 0.
    The channel graph links the summed axes; here they are handled."""
    index = sink.index
    ranks = [index.rank(name) for name in node.input]
    equation = attribute(node, "equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    parsed = einsum_labels(equation, ranks) if None not in ranks else None
    if parsed is None:
        return
    operands, output = parsed
    for name, labels in zip(node.input, operands, strict=True):
        for axis, label in enumerate(labels):
            if label not in output:
                sink.touch(position, Space(name, axis))


def _reduce_axes(index: GraphIndex, node: onnx.NodeProto) -> list[int] | None:
    rank = index.rank(node.input[0])
    if rank is None:
        return None
    if len(node.input) > 1 and node.input[1]:
        axes = index.const(node.input[1])
        return None if axes is None else [int(a) % rank for a in np.asarray(axes).reshape(-1)]
    axes = attribute(node, "axes")
    return list(range(rank)) if axes is None else [int(a) % rank for a in axes]


def _zeros_like(sink: _Sink, position: int, node: onnx.NodeProto) -> None:
    """Shape(t) read only by ConstantOfShape / Expand(scalar, .): a tensor shaped like t (the
    exporters' zeros_like). Its axes are t's; its size follows t's at run time."""
    index, source = sink.index, node.input[0]
    rank = index.rank(source)
    if rank is None or attribute(node, "start", 0) != 0 or attribute(node, "end") is not None:
        return
    fills = []
    for reader_position in index.consumers.get(node.output[0], []):
        reader = index.node(reader_position)
        scalar_fill = reader.op_type == "Expand" and reader.input[1] == node.output[0]
        scalar_fill = scalar_fill and index.rank(reader.input[0]) in (0, 1)
        if reader.op_type != "ConstantOfShape" and not scalar_fill:
            return
        if index.rank(reader.output[0]) != rank:
            return
        fills.append((reader_position, reader.output[0]))
    for reader_position, out in fills:
        for axis in range(rank):
            sink.link(position, Space(source, axis), Space(out, axis))
            sink.touch(reader_position, Space(out, axis))


def _id_reader(sink: _Sink, position: int, node: onnx.NodeProto) -> None:
    """A node reading expert ids (see the module docstring, point 2)."""
    index, op = sink.index, node.op_type
    label = node_label(node, position)
    id_inputs = [i for i, name in enumerate(node.input) if name in sink.ids]
    source = sink.ids[node.input[id_inputs[0]]]
    if op in ID_PASS_THROUGH and id_inputs == [0]:
        sink.ids[node.output[0]] = source
    elif op in ("Shape", "Size"):
        pass  # reads how many ids there are (tokens x k), not which experts
    elif op == "Equal" and len(id_inputs) == 1:
        other = 1 - id_inputs[0]
        value = index.const(node.input[other])
        if value is None or value.size != 1:
            sink.blocks[source].append(f"{label}: expert ids compared with a non-constant")
            return
        sink.selectors[source].append(Selector(position, other, int(value.reshape(-1)[0])))
    elif op in ("Gather", "GatherElements") and id_inputs == [1]:
        data = _axis(index, node.input[0], attribute(node, "axis", 0))
        if data is not None:
            sink.link(position, data, source)
    elif op == "GatherND" and id_inputs == [1] and attribute(node, "batch_dims", 0) == 0:
        if index.static_size(node.input[1], -1) == 1:
            sink.link(position, Space(node.input[0], 0), source)
        else:
            sink.blocks[source].append(f"{label}: GatherND with multi-axis expert indices")
    elif op == "ScatterElements" and id_inputs == [1]:
        data, out = node.input[0], node.output[0]
        axis = _axis(index, data, attribute(node, "axis", 0))
        if axis is None:
            return
        sink.link(position, Space(data, axis.axis), source)
        for a in range(index.rank(data) or 0):
            sink.link(position, Space(data, a), Space(out, a))
    elif op == "OneHot" and id_inputs == [0]:
        out = node.output[0]
        axis = _axis(index, out, attribute(node, "axis", -1))
        if axis is not None:
            sink.link(position, axis, source)
            sink.fixes.append(DepthFix(position, 1, source))
    else:
        sink.blocks[source].append(f"{label}: expert ids reach {op}, which has no expert rule")


def _fused_moe(sink: _Sink, position: int, node: onnx.NodeProto) -> None:
    """com.microsoft::MoE / QMoE: router_probs [T, E] (logits: the op applies softmax and
    top-k itself) and every [E, ...] weight, scale and bias input are indexed by expert."""
    index = sink.index
    probs = Space(node.input[1], 1)
    experts = index.static_size(node.input[1], 1)
    for name in node.input[2:]:
        if name and index.static_size(name, 0) == experts:
            sink.link(position, probs, Space(name, 0))
    sink.topk[probs].append((position, int(attribute(node, "k", 1))))


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def find_layers(dep: DepGraph) -> list[MoELayer]:
    """Every MoE layer of the model `dep` was built from (empty when there is no TopK and no
    fused MoE op: the common case costs one scan of the node list)."""
    index = dep.index
    has_routing = any(
        n.op_type == "TopK" or (n.domain == "com.microsoft" and n.op_type in FUSED_MOE_OPS)
        for n in index.model.graph.node
    )
    if not has_routing:
        return []
    sink = _run_rules(index)
    adjacency = _identity_adjacency(dep)
    layers, seen = [], set()
    for seed in sink.topk:
        if seed in seen:
            continue
        component, odd_links = _component(seed, adjacency, sink)
        seen |= component
        layer = _layer(dep, sink, component, odd_links)
        if layer is not None:
            layers.append(layer)
    return sorted(layers, key=lambda layer: layer.router)


def _identity_adjacency(dep: DepGraph) -> dict[Space, list[tuple[Space, bool]]]:
    """Channel-graph neighbours of each space, and whether the link is index-for-index."""
    adjacency: dict[Space, list[tuple[Space, bool]]] = defaultdict(list)
    for a, b, ia, ib in dep.links:
        size_a, size_b = dep.graph.nodes[a]["size"], dep.graph.nodes[b]["size"]
        identity = size_a == size_b and len(ia) == size_a and np.array_equal(ia, ib)
        adjacency[a].append((b, identity))
        adjacency[b].append((a, identity))
    return adjacency


def _component(seed: Space, adjacency, sink: _Sink) -> tuple[set[Space], list[str]]:
    component, queue, odd = {seed}, deque([seed]), []
    while queue:
        space = queue.popleft()
        neighbours = [(s, True) for s in sink.edges.get(space, ())] + adjacency.get(space, [])
        for other, identity in neighbours:
            if not identity:
                odd.append(f"{space} maps to {other} other than index for index")
                continue
            if other not in component:
                component.add(other)
                queue.append(other)
    return component, odd


def _layer(dep: DepGraph, sink: _Sink, component: set[Space], odd: list[str]) -> MoELayer | None:
    index = dep.index
    router = _router(index, component)
    if router is None:
        return None  # a TopK that is not routing (no constant projection feeds its axis)
    position, weight, logits = router
    n_experts = index.static_size(logits, -1)
    constants = {s for s in component if index.is_constant(s.tensor)}
    bad_sizes = [s for s in component if dep.index.static_size(s.tensor, s.axis) != n_experts]
    top_k = max(k for s in component for _, k in sink.topk.get(s, []))
    scores = min((s for s in component if s in sink.topk), key=lambda s: sink.topk[s][0][0])
    experts = [Expert(e) for e in range(n_experts)]
    blocked = list(odd) + [f"{s} is not of size {n_experts}" for s in bad_sizes]
    blocked += _closure(dep, sink, component)
    for space in component:
        for selector in sink.selectors.get(space, []):
            if not 0 <= selector.expert < n_experts:
                blocked.append(f"selector for expert {selector.expert} of {n_experts}")
                continue
            experts[selector.expert].selectors.append(selector)
    blocked += _find_merges(index, experts)
    fixes = [f for f in dep.fixes if set(f.spaces) & component]
    fixes += [f for f in sink.fixes if f.space in component]
    blocked += [
        f"a size constant encodes the expert axis with others: {f}"
        for f in fixes
        if not set(f.spaces) <= component
    ]
    return MoELayer(
        name=_layer_name(index, position, weight),
        router=position,
        router_weight=weight,
        logits=logits,
        n_experts=n_experts,
        top_k=top_k,
        spaces=sorted(component),
        experts=experts,
        fixes=fixes,
        blocked=list(dict.fromkeys(blocked)),
        constants=sorted(constants),
        scores=scores,
    )


def _router(index: GraphIndex, component: set[Space]) -> tuple[int, str, str] | None:
    """(position, weight, output) of the MatMul/Gemm whose constant 2-D weight produces the
    expert axis from a non-constant input."""
    for space in sorted(component):
        if not index.is_constant(space.tensor) or index.rank(space.tensor) != 2:
            continue
        for position in index.consumers.get(space.tensor, []):
            node = index.node(position)
            if node.op_type == "MatMul" and node.input[1] == space.tensor and space.axis == 1:
                pass
            elif node.op_type == "Gemm" and node.input[1] == space.tensor:
                if space.axis != (0 if attribute(node, "transB", 0) else 1):
                    continue
            else:
                continue
            if not index.is_constant(node.input[0]):
                return position, space.tensor, node.output[0]
    return None


def _closure(dep: DepGraph, sink: _Sink, component: set[Space]) -> list[str]:
    """Why the component cannot shrink: a node touching one of its spaces handles it neither
    in the channel graph nor by an expert rule, it is a graph input/output, or ids leak."""
    index, reasons = dep.index, []
    for space in sorted(component):
        reasons += sink.blocks.get(space, [])
        if space.tensor in index.graph_inputs or space.tensor in index.graph_outputs:
            reasons.append(f"{space} is a graph input or output")
        users = list(index.consumers.get(space.tensor, []))
        if space.tensor in index.producer and not index.is_constant(space.tensor):
            users.append(index.producer[space.tensor])
        expert_handled = set()
        for position in users:
            if space in sink.touched.get(position, ()):
                expert_handled.add(node_label(index.node(position), position))
            elif space not in dep.touched.get(position, ()):
                node = index.node(position)
                reasons.append(f"{node_label(node, position)}: no rule carries {space}")
        for reason in dep.blocks.get(space, []):
            if not any(reason.startswith(f"{label}: ") for label in expert_handled):
                reasons.append(reason)
    return reasons


def _find_merges(index: GraphIndex, experts: list[Expert]) -> list[str]:
    """For each selector, the merge that adds its branch to the running sum (docstring, 3),
    and the constants only that branch reads."""
    reasons = []
    for expert in experts:
        for selector in expert.selectors:
            merge = _merge_of(index, selector.node)
            if merge is None:
                reasons.append(f"expert {expert.index}: no Add/Scatter merges its branch")
                continue
            if index.node(merge.node).output[0] in index.graph_outputs:
                reasons.append(f"expert {expert.index}: its merge writes a graph output")
            if merge not in expert.merges:
                expert.merges.append(merge)
        if expert.merges:
            expert.weights = _branch_constants(index, expert.merges)
    merges = [m.node for e in experts for m in e.merges]
    if len(merges) != len(set(merges)):
        reasons.append("two experts share a merge")
    return reasons


def _descendants(index: GraphIndex, position: int) -> set[str]:
    """Tensors computed from node `position`'s outputs."""
    tensors = set(o for o in index.node(position).output if o)
    queue = deque(tensors)
    while queue:
        for consumer in index.consumers.get(queue.popleft(), []):
            for out in index.node(consumer).output:
                if out and out not in tensors:
                    tensors.add(out)
                    queue.append(out)
    return tensors


def _accumulator_input(node: onnx.NodeProto, branch: set[str]) -> int | None:
    """Which input of a merge node is the running sum (the one outside `branch`)."""
    inputs = list(node.input)
    if node.op_type in ("ScatterND", "ScatterElements"):
        reduction = attribute(node, "reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if reduction != "add" or inputs[0] in branch:
            return None
        return 0
    outside = [i for i, name in enumerate(inputs) if name not in branch]
    return outside[0] if len(outside) == 1 and len(inputs) > 1 else None


def _merge_of(index: GraphIndex, selector_node: int) -> Merge | None:
    branch = _descendants(index, selector_node)
    candidates = sorted(index.producer[t] for t in branch if t in index.producer)
    for position in candidates:
        node = index.node(position)
        if node.op_type in MERGE_OPS and node.domain in ("", "ai.onnx"):
            accumulator = _accumulator_input(node, branch)
            if accumulator is not None:
                return Merge(position, accumulator)
    return None


def _branch_constants(index: GraphIndex, merges: list[Merge]) -> list[str]:
    """Float constants that nothing reads once `merges` hand on their accumulator: liveness
    from the graph outputs, following only the accumulator input of each merge."""
    bypassed = {m.node: m.accumulator for m in merges}
    live: set[str] = set()
    pending = list(index.graph_outputs)
    while pending:
        name = pending.pop()
        if name in live:
            continue
        live.add(name)
        producer = index.producer.get(name)
        if producer is None:
            continue
        node = index.node(producer)
        # a bypassed merge reads only its accumulator; others read everything, subgraphs too
        inputs = [node.input[bypassed[producer]]] if producer in bypassed else all_inputs(node)
        pending.extend(n for n in inputs if n and n not in live)
    readers = {name for node in index.model.graph.node for name in node.input}
    return sorted(
        name
        for name in index.constants
        if name in readers and name not in live and index.constants.is_float(name)
    )


def _layer_name(index: GraphIndex, position: int, weight: str) -> str:
    """The MoE block's module path, the router's parent module: from the router weight's name
    (`layers.0.moe.gate.weight` -> `layers.0.moe`), dynamo's name scopes, or the node name
    (`/layers.0/moe/gate/MatMul` -> `/layers.0/moe`); else the router's position."""
    parts = weight.split(".")
    if parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    if "::" not in weight and not weight.startswith("val_") and len(parts) > 1:
        return ".".join(parts[:-1])
    node = index.node(position)
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = [s for s in ast.literal_eval(prop.value) if "." in s]
            if len(scopes) >= 2:
                return scopes[-2]
    if node.name.startswith("/") and node.name.count("/") >= 3:
        return "/".join(node.name.split("/")[:-2])
    return f"moe@{position}"


# ---------------------------------------------------------------------------------------------
# Selection: the interface expert criteria (passes/stun.py, expert_frequency.py, expert_norm.py)
# implement. A criterion returns the experts each layer loses; it never edits the graph.
# ---------------------------------------------------------------------------------------------


@dataclass
class RouterStats:
    """How a layer's router chose on calibration tokens: `counts[e]` tokens had e in their
    top-k, `coactivation[i, j]` tokens had both i and j (diagonal = counts)."""

    counts: np.ndarray
    coactivation: np.ndarray
    tokens: int


@dataclass
class ExpertContext:
    constants: Mapping[str, np.ndarray]
    stats: dict[str, RouterStats] | None = None  # by layer name, for criteria that need data
    options: dict = field(default_factory=dict)


@dataclass
class ExpertSelection:
    """Experts to remove per layer name; `clusters` (STUN) maps each layer to its kept experts'
    clusters, representative first, for optional weight averaging."""

    removed: dict[str, np.ndarray]
    clusters: dict[str, list[list[int]]] = field(default_factory=dict)


class ExpertCriterion(ABC):
    name: ClassVar[str]
    needs_data: ClassVar[bool] = False

    @abstractmethod
    def select(
        self, layers: list[MoELayer], context: ExpertContext, ratio: float
    ) -> ExpertSelection:
        """Which experts go, removing about `ratio` of the experts of the prunable layers."""


EXPERT_CRITERIA: dict[str, type[ExpertCriterion]] = {}


def register_criterion(cls: type[ExpertCriterion]) -> type[ExpertCriterion]:
    EXPERT_CRITERIA[cls.name] = cls
    return cls


def removal_counts(layers: list[MoELayer], ratio: float) -> dict[str, int]:
    """floor(ratio * E) experts per prunable layer, never leaving fewer than top-k (or 1)."""
    return {
        layer.name: min(
            math.floor(ratio * layer.n_experts + 1e-9), layer.n_experts - max(layer.top_k, 1)
        )
        for layer in layers
        if layer.prunable
    }


def select_lowest(
    layers: list[MoELayer], scores: Mapping[str, np.ndarray], ratio: float
) -> ExpertSelection:
    """Per layer, the `removal_counts` lowest-scoring experts (ties: lower index first)."""
    removed = {}
    for name, count in removal_counts(layers, ratio).items():
        order = np.lexsort((np.arange(len(scores[name])), scores[name]))
        removed[name] = np.sort(order[:count])
    return ExpertSelection(removed)


def router_rows(layer: MoELayer, constants: Mapping[str, np.ndarray]) -> np.ndarray:
    """The router weight as [E, hidden]: row e scores expert e (G_e in STUN)."""
    weight = np.asarray(constants[layer.router_weight], dtype=np.float64)
    axis = next(s.axis for s in layer.constants if s.tensor == layer.router_weight)
    return np.moveaxis(weight, axis, 0).reshape(layer.n_experts, -1)
