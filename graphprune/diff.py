"""Diff: two ONNX models side by side, summary and layer by layer.

`diff(a, b)` loads both models (external data included), counts parameters, MACs (per op type,
from shapes inferred at the given or default input shapes), file bytes, nodes and op counts,
compares the graph input/output signatures, and pairs the *layers* of A with those of B.

A layer is a node that carries weights: Conv, ConvTranspose, Gemm, MatMul or Einsum with a
constant operand, BatchNormalization, InstanceNormalization, LayerNormalization and
GroupNormalization with constant parameters, and Gather on a constant float table (an
embedding). A constant operand may reach the node through Identity, Cast, DequantizeLinear,
Transpose, Reshape, Squeeze, Unsqueeze or Flatten; the constant it comes from is the layer's
*weight* (its provenance). Each layer has in/out channels (features; for a normalization, its
width), and a *structure* that pruning never changes: kernel size, strides, dilations,
depthwise or not, the Einsum equation, the LayerNormalization axis.

Matching
--------
Names are the strongest evidence when they survive, position and shape when they do not
(another exporter, a renaming pass). The stages, each only over layers still unpaired:

(a) *weight*: same weight constant name, same op type and same structure (k-th with k-th
    when a weight is read by several layers);
(b) *name*: same node name, same op type and same structure;
(c) *position*: the pairs from (a) and (b) whose order agrees in both graphs (the longest
    increasing subsequence of B positions, taken in A order) cut both layer sequences into
    gaps; inside each gap, a weighted longest-common-subsequence alignment (dynamic
    programming, one numpy row at a time) pairs layers of the same op family (Gemm and MatMul
    are both "linear") with equal structure and B's channels no larger than A's (no
    smaller, when B has more parameters than A: a diff read backwards, pruned → original). Each
    candidate pair scores 1000, plus up to 500 for the share of A's neighbours (nearest layers
    upstream and downstream, graph inputs and outputs included) already paired with B's
    neighbours, minus up to 1200 for the share paired elsewhere (a candidate whose paired
    neighbours all disagree scores below zero and is never chosen), plus 10 when the weight
    shapes are equal. Order is kept, so two layers that swap places are not paired here; the count
    dominates the score, so the alignment pairs as many layers as order allows, preferring
    candidates that agree with the pairs known so far. Gaps are aligned in graph order, so
    later gaps see earlier pairs as neighbours;
(d) *neighbours*: a layer still unpaired is paired with the compatible B layer whose paired
    neighbours agree with its own (at least one agreeing, none contradicting), when exactly one
    candidate scores best; a layer is looked at again whenever its evidence changes (a
    neighbour or a candidate gets paired), until nothing changes. This recovers layers whose
    order differs between the graphs (e.g. a downsample branch exported before or after the
    main path).

Every stage is deterministic: candidates are visited in graph order, ties are broken by
position.

Status per row: `same` (equal weight shapes), `pruned` (no dimension larger, one smaller),
`resized` (paired, some dimension larger: B is not a prune of A), `bypassed` (only in A, and
in B its paired upstream layers feed its paired downstream layers directly: removed and its
output replaced by its input, or folded), `removed` (only in A, its neighbourhood paired),
`added` (only in B, its neighbourhood paired), `unmatched` (no paired neighbour to tell
removed from replaced; the row says why nothing in the other graph fitted).

Heads and KV groups come from graphprune's own analysis of each side (a projection whose
weight is in a head or kv-group group gets that group's counts); experts likewise (a router or
a stacked [E, ...] expert weight of a mixture-of-experts layer gets its expert count, from
`graphprune.moe`). MLP width is a field of each row so the JSON format does not change when
MLP analysis fills it, and stays null until then (nothing here guesses it from shapes).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from math import prod
from pathlib import Path

import numpy as np
import onnx

from graphprune.graph import Dim, GraphIndex, all_inputs, attribute
from graphprune.inputs import input_shapes as input_shapes_of
from graphprune.load import infer_shapes, load_sized
from graphprune.prepare import prepare
from graphprune.report import (
    FLOAT_TYPES,
    INTEGER_TYPES,
    NON_PARAMETER_INPUTS,
    breakdown_adds,
    node_macs,
    params_text,
    sized_skeleton,
    summarize,
)

FORMAT = "graphprune.diff/1"
PASS_THROUGH = {
    "Identity",
    "Cast",
    "CastLike",
    "DequantizeLinear",
    "Transpose",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
}
NORMS = {
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
}
MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FAMILY = {"Gemm": "linear", "MatMul": "linear"}
STATUSES = ("same", "pruned", "resized", "bypassed", "removed", "added", "unmatched")
MATCH_SCORE, NEIGHBOUR_BONUS, NEIGHBOUR_PENALTY, SHAPE_BONUS = 1000, 500, 1200, 10
MAX_DP_CELLS = 1_000_000  # a gap larger than this is aligned op family by op family
MIN_NAME_BLOCKS, MAX_NAME_BLOCKS = 8, 40  # blocks from names (see _assign_blocks)
POSITION_BLOCKS = 12


# --------------------------------------------------------------------------- data


@dataclass
class Layer:
    """One weight-bearing node of one graph."""

    id: int  # position in the graph's layer sequence
    position: int  # position in graph.node
    op: str
    name: str
    weight: str | None  # the constant the weight operand comes from
    weight_shape: tuple[Dim, ...]
    in_ch: int | None
    out_ch: int | None
    structure: tuple  # what pruning never changes; must be equal for two layers to pair
    params: int
    macs: int | None
    module: str | None  # dotted module path recovered from names, for blocks
    up: frozenset = frozenset()  # nearest layers upstream (ids) and ("in", name) inputs
    down: set = field(default_factory=set)  # nearest layers downstream and ("out", name)
    heads: int | None = None  # attention heads the layer projects to or from
    kv_groups: int | None = None  # GQA/MQA key/value heads
    experts: int | None = None  # experts a router or a stacked [E, ...] expert weight spans

    @property
    def family(self) -> str:
        return FAMILY.get(self.op, self.op)

    @property
    def neighbours(self) -> set:
        return set(self.up) | self.down

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "module": self.module,
            "position": self.position,
            "weight": self.weight,
            "weight_shape": list(self.weight_shape),
            "in": self.in_ch,
            "out": self.out_ch,
            "params": self.params,
            "macs": self.macs,
            "heads": self.heads,
            "kv_groups": self.kv_groups,
            # filled by MLP analysis later; never guessed here
            "mlp_width": None,
            "experts": self.experts,
        }


@dataclass
class Side:
    """One model as the diff sees it."""

    path: str
    summary: dict
    layers: list[Layer]
    inputs: list[dict]
    outputs: list[dict]
    notes: list[str]


@dataclass
class DiffReport:
    """The diff of two models; `as_dict()` is plain JSON data (see schemas/diff.schema.json)."""

    a: Side
    b: Side
    rows: list[dict]
    blocks: list[dict]
    block_grouping: str
    matching: dict
    signatures: dict
    latency: dict | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "format": FORMAT,
            "a": {"path": self.a.path, **self.a.summary},
            "b": {"path": self.b.path, **self.b.summary},
            "delta": _delta(self.a.summary, self.b.summary),
            "signatures": self.signatures,
            "layers": self.rows,
            "blocks": self.blocks,
            "block_grouping": self.block_grouping,
            "matching": self.matching,
            "latency": self.latency,
            "notes": [*self.a.notes, *self.b.notes, *self.notes],
        }

    def text(self) -> str:
        """Plain-text side by side: the summary with ratios, how layers were paired, and one
        line per layer (for a terminal; `as_dict` has everything)."""
        a, b = self.a.summary, self.b.summary
        rows = [(k, a[k], b[k]) for k in ("params", "macs", "bytes", "nodes", "layers")]
        lines = [f"{'':<12}{'A (before)':>16}{'B (after)':>16}{'B/A':>8}"]
        for name, x, y in rows:
            lines.append(f"{name:<12}{x:>16,}{y:>16,}{_ratio_text(x, y):>8}")
        if self.latency:
            x, y = self.latency["before_ms"], self.latency["after_ms"]
            lines.append(f"{'latency ms':<12}{x:>16.3f}{y:>16.3f}{_ratio_text(x, y):>8}")
        for side, counts in (("A", a), ("B", b)) if breakdown_adds(a, b) else ():
            text = params_text(
                counts["params"], counts["params_by_dtype"], counts["params_in_subgraphs"]
            )
            lines.append(f"{side}: {text}")
        lines.append(self.matching["summary"])
        if self.signatures["differ"]:
            lines.append("graph inputs/outputs differ (see the JSON or HTML report)")
        lines += [_row_text(row) for row in self.rows]
        lines += [f"note: {note}" for note in self.as_dict()["notes"]]
        return "\n".join(lines)


def _ratio_text(before, after) -> str:
    return f"{after / before:.3f}" if before else "-"


def _row_text(row: dict) -> str:
    a, b = row["a"], row["b"]
    kept = "" if row["kept_ratio"] is None else f" kept {row['kept_ratio']:.3f}"
    reason = f"  ({row['reason']})" if row["reason"] else ""
    has_experts = any(side and side["experts"] is not None for side in (a, b))
    experts = f" experts {_span(a, b, 'experts')}" if has_experts else ""
    return (
        f"{row['index'] + 1:>4} {row['status']:<9} {row['op']:<10} in {_span(a, b, 'in')} "
        f"out {_span(a, b, 'out')}{experts}{kept}  {_span(a, b, 'name', ' -> ')}{reason}"
    )


def _span(a: dict | None, b: dict | None, key: str, arrow: str = "->") -> str:
    """A's value, B's, or both with an arrow when they differ."""
    if a is None or b is None:
        return str((a or b)[key])
    return str(a[key]) if a[key] == b[key] else f"{a[key]}{arrow}{b[key]}"


# --------------------------------------------------------------------------- entry point


def diff(
    a_path: str | Path,
    b_path: str | Path,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    bench: bool = False,
    latency: tuple[float, float] | None = None,
    provider: str = "cpu",
) -> DiffReport:
    """Compare model `a_path` (before) with `b_path` (after).

    MACs are counted at `input_shapes` (symbolic dimensions default as the oracle's inputs do).
    Latency is `latency` (before_ms, after_ms) when given, else measured with
    `graphprune.bench` on `provider` when `bench` is true, else absent.
    """
    a, b = _side(a_path, input_shapes), _side(b_path, input_shapes)
    pseudo = _pseudo_map(a, b)
    # a model with more parameters than A is read as A un-pruned: channels may only grow
    grow = b.summary["params"] > a.summary["params"]
    matcher = _Matcher(a.layers, b.layers, pseudo, grow)
    matcher.run()
    rows = _rows(matcher, pseudo)
    grouping = _assign_blocks(rows, a.layers, b.layers)
    report = DiffReport(
        a=a,
        b=b,
        rows=rows,
        blocks=_blocks(rows),
        block_grouping=grouping,
        matching=_matching_summary(matcher, rows),
        signatures=_signatures(a, b),
        latency=_latency(a_path, b_path, input_shapes, bench, latency, provider),
    )
    if not matcher.by["weight"] and not matcher.by["name"] and a.layers and b.layers:
        report.notes.append(
            "the graphs share no weight or node names: layers were paired by position, "
            "shape and neighbours only"
        )
    return report


def _latency(a_path, b_path, input_shapes, bench: bool, given, provider: str) -> dict | None:
    """Latency before and after: given numbers, or measured (imported lazily: optional)."""
    if given is not None:
        before, after = (float(x) for x in given)
        return _latency_dict(before, after, "given", None)
    if not bench:
        return None
    from graphprune.bench import bench as run_bench

    results = [
        run_bench(str(p), provider=provider, input_shapes=input_shapes) for p in (a_path, b_path)
    ]
    extra = {
        "before_p90_ms": float(results[0].p90_ms),
        "after_p90_ms": float(results[1].p90_ms),
        "before_throughput": float(results[0].throughput),
        "after_throughput": float(results[1].throughput),
    }
    return _latency_dict(results[0].median_ms, results[1].median_ms, f"bench:{provider}", extra)


def _latency_dict(before: float, after: float, source: str, extra: dict | None) -> dict:
    return {
        "source": source,
        "before_ms": float(before),
        "after_ms": float(after),
        "speedup": float(before) / float(after) if after else None,
        **(extra or {}),
    }


# --------------------------------------------------------------------------- one side


def _side(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None) -> Side:
    """Load `path` and describe it: summary, signature, layers with their neighbours."""
    model, file_bytes = load_sized(path)
    counted = summarize(model, file_bytes, macs=False)
    shapes, used_shapes = _inferred_shapes(model, input_shapes)
    index = GraphIndex.build(model)
    macs_by_node, unknown = _macs_by_node(model, shapes)
    by_op: Counter = Counter()
    for position, macs in macs_by_node.items():
        by_op[model.graph.node[position].op_type] += macs
    layers = _layers(index, shapes, macs_by_node)
    _attach_heads(layers, path)
    notes = []
    if unknown:
        notes.append(
            f"{Path(path).name}: MACs not counted for {unknown} Conv/Gemm/MatMul nodes whose "
            "shapes could not be inferred"
        )
    summary = {
        "params": counted.params,
        "params_by_dtype": counted.params_by_dtype,
        "params_in_subgraphs": counted.params_in_subgraphs,
        "macs": int(sum(by_op.values())),
        "macs_by_op": {op: int(n) for op, n in sorted(by_op.items())},
        "macs_complete": unknown == 0,
        "bytes": file_bytes,
        "nodes": counted.nodes,
        "ops": counted.ops,
        "layers": len(layers),
        "input_shapes": {k: list(v) for k, v in used_shapes.items()},
    }
    return Side(
        str(path),
        summary,
        layers,
        _signature(model.graph.input, index),
        _signature(model.graph.output, index),
        notes,
    )


def _attach_heads(layers: list[Layer], path: str | Path) -> None:
    """Heads and key/value groups per projection, and experts per router or stacked expert
    weight, from graphprune's analysis of the model."""
    from graphprune.errors import GraphpruneError
    from graphprune.moe import find_layers
    from graphprune.pipeline import analyze

    try:
        analysis = analyze(path)
    except (GraphpruneError, ValueError):
        return
    counts: dict[str, tuple[int, int | None]] = {}
    for group in analysis.dep.all_groups:
        if group.kind in ("head", "kv-group"):
            for space in group.roles:
                counts[space.tensor] = analysis.dep.attention_counts(group)
    experts = {
        space.tensor: (moe.n_experts, space.axis)
        for moe in find_layers(analysis.dep)
        for space in moe.constants
    }
    for layer in layers:
        if layer.weight in counts:
            layer.heads, layer.kv_groups = counts[layer.weight]
        if layer.weight in experts:
            layer.experts, axis = experts[layer.weight]
            layer.structure = _without_expert_axis(layer.structure, axis)


def _without_expert_axis(structure: tuple, axis: int) -> tuple:
    """A stacked expert weight's batch axes are part of its MatMul structure; the expert axis
    among them is not (removing experts shrinks it), so both sides pair by name."""
    if len(structure) == 3 and structure[0] == "linear" and axis < len(structure[2]):
        batch = list(structure[2])
        batch[axis] = "experts"
        return (*structure[:2], tuple(batch))
    return structure


def _inferred_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None
) -> tuple[dict[str, tuple[Dim, ...]], dict[str, tuple[int, ...]]]:
    """Every tensor's shape at concrete input shapes, and the input shapes used.

    Inferred on a weightless skeleton (as `report.count_macs` does) after `prepare` folds
    run-time size arithmetic such as TorchScript's "SAME" padding, as the pipeline does before
    counting; tensor names stay the model's own, so the shapes apply to the model's nodes.
    """
    used = input_shapes_of(model, input_shapes)
    skeleton = sized_skeleton(model, used)
    try:
        prepare(skeleton, in_place=True)
    except Exception:  # best effort: what cannot be folded stays unknown, and the notes say so
        skeleton = sized_skeleton(model, used)
    return GraphIndex.build(infer_shapes(skeleton, in_place=True)).shapes, used


def _macs_by_node(model: onnx.ModelProto, shapes: Mapping) -> tuple[dict[int, int], int]:
    """MACs of each node with static shapes (report's formulas), and how many MAC-bearing
    nodes had to be skipped for unknown shapes."""
    counted, unknown = {}, 0
    for position, node in enumerate(model.graph.node):
        names = [n for n in [*node.input, *node.output] if n]
        shape = {n: shapes.get(n) for n in names}
        if any(s is None or not all(isinstance(d, int) for d in s) for s in shape.values()):
            unknown += node.op_type in MAC_OPS
            continue
        macs = node_macs(node, shape)
        if macs:
            counted[position] = int(macs)
    return counted, unknown


def _signature(values: Iterable[onnx.ValueInfoProto], index: GraphIndex) -> list[dict]:
    """Name, dtype and shape (symbolic dims as names, unknown as null) of graph inputs or
    outputs; initializers listed as inputs are weights, not part of the signature."""
    result = []
    for value in values:
        if value.name in index.constants:
            continue
        tensor = value.type.tensor_type
        shape = None
        if value.type.HasField("tensor_type") and tensor.HasField("shape"):
            shape = [_dim(d) for d in tensor.shape.dim]
        result.append({"name": value.name, "dtype": _dtype(tensor.elem_type), "shape": shape})
    return result


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param if dim.HasField("dim_param") else None


def _dtype(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"


# --------------------------------------------------------------------------- layers


def _constant_roots(index: GraphIndex) -> dict[str, str]:
    """Tensor → the constant it is derived from: constants themselves, and the outputs of
    pass-through ops (Identity, Cast, Transpose, DequantizeLinear, ...) of constants."""
    roots = {name: name for name in index.constants}
    for node in index.model.graph.node:
        if node.op_type not in PASS_THROUGH or not node.input or node.input[0] not in roots:
            continue
        if all(not name or name in roots for name in node.input[1:]):
            for out in node.output:
                roots[out] = roots[node.input[0]]
    return roots


def _layers(index: GraphIndex, shapes: Mapping, macs_by_node: Mapping[int, int]) -> list[Layer]:
    """The weight-bearing nodes in graph (topological) order, with their neighbours."""
    roots = _constant_roots(index)
    layers: list[Layer] = []
    for position, node in enumerate(index.model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        described = _describe(node, roots, shapes, index)
        if described is None:
            continue
        operand, in_ch, out_ch, structure = described
        weight = roots[operand]
        layers.append(
            Layer(
                id=len(layers),
                position=position,
                op=node.op_type,
                name=node.name or f"{node.op_type}#{position}",
                weight=weight,
                weight_shape=tuple(shapes.get(operand) or index.constants.shape(weight)),
                in_ch=in_ch,
                out_ch=out_ch,
                structure=structure,
                params=_params(node, roots, index),
                macs=macs_by_node.get(position, 0) if _static(node, shapes) else None,
                module=_module_path(node.name, weight),
            )
        )
    _link(index, roots, layers)
    return layers


def _static(node: onnx.NodeProto, shapes: Mapping) -> bool:
    names = [n for n in [*node.input, *node.output] if n]
    return all(
        shapes.get(n) is not None and all(isinstance(d, int) for d in shapes[n]) for n in names
    )


def _params(node: onnx.NodeProto, roots: Mapping[str, str], index: GraphIndex) -> int:
    """Parameters the node reads, float or integer (an int8 weight through its
    DequantizeLinear), each constant once; shape and index operands are not parameters
    (graphprune.report)."""
    skipped = NON_PARAMETER_INPUTS.get(node.op_type, ())
    read = {roots[n] for i, n in enumerate(node.input) if n in roots and i not in skipped}
    weights = [r for r in read if index.constants.elem_type(r) in FLOAT_TYPES | INTEGER_TYPES]
    return int(sum(index.constants.size(r) for r in weights))


def _operand_shape(name: str, roots: Mapping, shapes: Mapping, index: GraphIndex) -> tuple:
    shape = shapes.get(name)
    return tuple(shape) if shape is not None else index.constants.shape(roots[name])


def _describe(node: onnx.NodeProto, roots: Mapping, shapes: Mapping, index: GraphIndex):
    """(weight operand, in channels, out channels, structure) when `node` is a layer."""
    op = node.op_type
    handler = _DESCRIBERS.get(op)
    if handler is None:
        return None
    return handler(node, roots, lambda n: _operand_shape(n, roots, shapes, index), index)


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) else None


def _spatial(node: onnx.NodeProto, kernel: tuple) -> tuple:
    """Kernel, strides, dilations, auto_pad: what a pruning rewrite never changes."""
    ones = [1] * len(kernel)
    return (
        tuple(kernel),
        tuple(attribute(node, "strides", ones)),
        tuple(attribute(node, "dilations", ones)),
        _text(attribute(node, "auto_pad", "NOTSET")),
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _conv(node, roots, shape_of, index):
    if len(node.input) < 2 or node.input[1] not in roots:
        return None
    w = shape_of(node.input[1])
    if len(w) < 3:
        return None
    group = int(attribute(node, "group", 1))
    depthwise = group > 1 and w[1] == 1
    structure = ("conv", *_spatial(node, w[2:]), depthwise)
    if node.op_type == "Conv":
        return node.input[1], _mul(w[1], group), _int(w[0]), structure
    return node.input[1], _int(w[0]), _mul(w[1], group), structure


def _mul(size, factor: int) -> int | None:
    size = _int(size)
    return None if size is None else size * factor


def _gemm(node, roots, shape_of, index):
    if len(node.input) > 1 and node.input[1] in roots:
        w = shape_of(node.input[1])
        k, n = (w[1], w[0]) if attribute(node, "transB", 0) else (w[0], w[1])
        return node.input[1], _int(k), _int(n), ("linear", "right", ())
    if node.input[0] in roots:
        w = shape_of(node.input[0])
        m, k = (w[1], w[0]) if attribute(node, "transA", 0) else (w[0], w[1])
        return node.input[0], _int(k), _int(m), ("linear", "left", ())
    return None


def _matmul(node, roots, shape_of, index):
    if len(node.input) > 1 and node.input[1] in roots:
        w = shape_of(node.input[1])
        if len(w) == 1:
            return node.input[1], _int(w[0]), None, ("linear", "vector", ())
        return node.input[1], _int(w[-2]), _int(w[-1]), ("linear", "right", tuple(w[:-2]))
    if node.input[0] in roots:
        w = shape_of(node.input[0])
        if len(w) == 1:
            return node.input[0], _int(w[0]), None, ("linear", "vector", ())
        return node.input[0], _int(w[-1]), _int(w[-2]), ("linear", "left", tuple(w[:-2]))
    return None


def _einsum(node, roots, shape_of, index):
    """Weight letters kept in the output are out features, the contracted ones in features."""
    operands = [i for i, name in enumerate(node.input) if name in roots]
    if not operands:
        return None
    k = operands[0]
    equation = _text(attribute(node, "equation", "")).replace(" ", "")
    terms, output = _einsum_terms(equation)
    w = shape_of(node.input[k])
    in_ch = out_ch = None
    if k < len(terms) and "." not in terms[k] and len(terms[k]) == len(w):
        sizes = dict(zip(terms[k], w, strict=True))
        in_ch = _product([sizes[c] for c in terms[k] if c not in output])
        out_ch = _product([sizes[c] for c in terms[k] if c in output])
    return node.input[k], in_ch, out_ch, ("einsum", equation, k)


def _einsum_terms(equation: str) -> tuple[list[str], str]:
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if not _:
        letters = Counter(c for c in lhs if c.isalpha())
        rhs = "".join(sorted(c for c, n in letters.items() if n == 1))
    return terms, rhs


def _product(sizes: list) -> int | None:
    return int(prod(sizes)) if all(isinstance(s, (int, np.integer)) for s in sizes) else None


def _norm(node, roots, shape_of, index):
    if len(node.input) < 2 or node.input[1] not in roots:
        return None
    width = _product(list(shape_of(node.input[1])))
    structure: tuple = (node.op_type,)
    if node.op_type == "LayerNormalization":
        structure = (node.op_type, int(attribute(node, "axis", -1)), len(shape_of(node.input[1])))
    return node.input[1], width, width, structure


def _gather(node, roots, shape_of, index):
    """A Gather of rows of a constant float table by computed indices: an embedding."""
    if len(node.input) < 2 or node.input[0] not in roots or node.input[1] in roots:
        return None
    if not index.constants.is_float(roots[node.input[0]]) or attribute(node, "axis", 0) != 0:
        return None
    w = shape_of(node.input[0])
    if len(w) < 2:
        return None
    return node.input[0], _int(w[0]), _product(list(w[1:])), ("embedding", len(w))


_DESCRIBERS = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Einsum": _einsum,
    "Gather": _gather,
    **dict.fromkeys(NORMS, _norm),
}


def _link(index: GraphIndex, roots: Mapping[str, str], layers: list[Layer]) -> None:
    """Set each layer's nearest layers upstream and downstream, looking through every node
    that is not a layer (activations, pooling, reshapes, residual adds, concats)."""
    at = {layer.position: layer for layer in layers}
    reach: dict[str, frozenset] = {name: frozenset({("in", name)}) for name in index.graph_inputs}
    for position, node in enumerate(index.model.graph.node):
        data = [n for n in all_inputs(node) if n not in roots]
        seen = frozenset().union(*(reach.get(n, frozenset()) for n in data))
        layer = at.get(position)
        if layer is not None:
            layer.up = seen
            seen = frozenset({layer.id})
        for name in node.output:
            reach[name] = seen
    for layer in layers:
        for u in layer.up:
            if isinstance(u, int):
                layers[u].down.add(layer.id)
    for value in index.model.graph.output:
        for u in reach.get(value.name, ()):
            if isinstance(u, int):
                layers[u].down.add(("out", value.name))


def _module_path(node_name: str, weight: str | None) -> str | None:
    """Dotted module path from names: TorchScript scopes ('/layer1/layer1.0/conv1/Conv'), else
    the weight's name ('layer1.0.conv1.weight'); None when names carry no structure."""
    if node_name.startswith("/") and node_name.count("/") >= 2:
        parts: list[str] = []
        for segment in node_name.strip("/").split("/")[:-1]:
            if parts and segment.startswith(parts[-1] + "."):
                parts[-1] = segment
            else:
                parts.append(segment)
        return ".".join(parts) or None
    if weight and "::" not in weight and "." in weight:
        return weight.rsplit(".", 1)[0]
    return None


def _levels(module: str) -> list[str]:
    """Module path split into levels, numbered children kept with their container:
    'model.layers.3.mlp.up_proj' → ['model', 'layers.3', 'mlp', 'up_proj']."""
    levels: list[str] = []
    for part in module.split("."):
        if part.isdigit() and levels:
            levels[-1] += "." + part
        else:
            levels.append(part)
    return levels


def _block_at(module: str, depth: int) -> str:
    """The first `depth` levels of the module's container (a top-level module is its own)."""
    levels = _levels(module)
    container = levels[:-1] or levels
    return ".".join(container[:depth])


# --------------------------------------------------------------------------- matching


def _pseudo_map(a: Side, b: Side) -> dict:
    """Graph inputs and outputs of A → those of B: by name, else by position."""
    mapping = {}
    for kind, xs, ys in (("in", a.inputs, b.inputs), ("out", a.outputs, b.outputs)):
        names = {y["name"] for y in ys}
        for i, x in enumerate(xs):
            if x["name"] in names:
                mapping[(kind, x["name"])] = (kind, x["name"])
            elif i < len(ys) and ys[i]["name"] not in {x2["name"] for x2 in xs}:
                mapping[(kind, x["name"])] = (kind, ys[i]["name"])
    return mapping


class _Matcher:
    """Pairs layers of A with layers of B (see the module docstring)."""

    def __init__(self, a: list[Layer], b: list[Layer], pseudo: Mapping, grow: bool = False):
        self.a, self.b, self.pseudo, self.grow = a, b, pseudo, grow
        self.kinds_a, self.kinds_b = _kinds(a), _kinds(b)
        self.a_to_b: dict[int, int] = {}
        self.b_to_a: dict[int, int] = {}
        self.how: dict[int, str] = {}
        self.by: Counter = Counter({k: 0 for k in ("weight", "name", "position", "neighbours")})

    def run(self) -> None:
        self._by_key(lambda layer: layer.weight, "weight")
        self._by_key(lambda layer: layer.name, "name")
        self._align_gaps()
        self._by_neighbours()

    def fits(self, x: Layer, y: Layer) -> bool:
        return compatible(x, y, self.grow)

    def pair(self, i: int, j: int, how: str) -> None:
        self.a_to_b[i], self.b_to_a[j], self.how[i] = j, i, how
        self.by[how] += 1

    def mapped(self, key):
        """B's counterpart of an A neighbour (layer id or graph input/output), if known."""
        return self.a_to_b.get(key) if isinstance(key, int) else self.pseudo.get(key)

    # (a), (b)
    def _by_key(self, key, how: str) -> None:
        free_b: dict[tuple, list[int]] = defaultdict(list)
        for layer in self.b:
            if layer.id not in self.b_to_a and key(layer):
                free_b[(key(layer), layer.op, layer.structure)].append(layer.id)
        for layer in self.a:
            if layer.id in self.a_to_b or not key(layer):
                continue
            candidates = free_b.get((key(layer), layer.op, layer.structure))
            if candidates:
                self.pair(layer.id, candidates.pop(0), how)

    # (c)
    def _align_gaps(self) -> None:
        anchors = _increasing(sorted(self.a_to_b.items()))
        bounds = [(-1, -1), *anchors, (len(self.a), len(self.b))]
        for (a0, b0), (a1, b1) in pairwise(bounds):
            xs = [i for i in range(a0 + 1, a1) if i not in self.a_to_b]
            ys = [j for j in range(b0 + 1, b1) if j not in self.b_to_a]
            if xs and ys:
                self._align(xs, ys)

    def _align(self, xs: list[int], ys: list[int]) -> None:
        if len(xs) * len(ys) <= MAX_DP_CELLS:
            for i, j in _lcs(self._scores(xs, ys)):
                self.pair(xs[i], ys[j], "position")
            return
        families = sorted({self.a[i].family for i in xs})
        for family in families:
            fx = [i for i in xs if self.a[i].family == family]
            fy = [j for j in ys if self.b[j].family == family and j not in self.b_to_a]
            if len(fx) * len(fy) <= MAX_DP_CELLS:
                for i, j in _lcs(self._scores(fx, fy)):
                    self.pair(fx[i], fy[j], "position")
            else:  # too large to align: pair compatible layers in order
                self._in_order(fx, fy)

    def _in_order(self, xs: list[int], ys: list[int]) -> None:
        k = 0
        for i in xs:
            while k < len(ys) and not self.fits(self.a[i], self.b[ys[k]]):
                k += 1
            if k == len(ys):
                return
            self.pair(i, ys[k], "position")
            k += 1

    def _scores(self, xs: list[int], ys: list[int]) -> np.ndarray:
        """Score of pairing xs[i] with ys[j]; -inf where they cannot pair."""
        scores = np.full((len(xs), len(ys)), -np.inf)
        by_key: dict[tuple, list[int]] = defaultdict(list)
        for col, j in enumerate(ys):
            by_key[(self.b[j].family, self.b[j].structure)].append(col)
        for row, i in enumerate(xs):
            x = self.a[i]
            for col in by_key.get((x.family, x.structure), []):
                y = self.b[ys[col]]
                if self.fits(x, y):
                    scores[row, col] = self._pair_score(x, y)
        return scores

    def _pair_score(self, x: Layer, y: Layer) -> float:
        agree, disagree = self._agreement(x, y)
        known = agree + disagree
        score = MATCH_SCORE + (SHAPE_BONUS if x.weight_shape == y.weight_shape else 0)
        if known:
            score += round(NEIGHBOUR_BONUS * agree / known - NEIGHBOUR_PENALTY * disagree / known)
        return float(score)

    def _agreement(self, x: Layer, y: Layer) -> tuple[int, int]:
        """How many of x's paired neighbours are y's neighbours, and how many are not."""
        agree = disagree = 0
        theirs = y.neighbours
        for n in x.neighbours:
            m = self.mapped(n)
            if m is None:
                continue
            if m in theirs:
                agree += 1
            else:
                disagree += 1
        return agree, disagree

    # (d)
    def _by_neighbours(self) -> None:
        """Stage (d) with a work list: A layers in id order; pairing x with y re-queues the
        layers whose evidence changed (x's neighbours, and those that had y as a candidate)."""
        self.touching: dict = defaultdict(list)  # B graph input/output → B layers beside it
        for y in self.b:
            for n in y.neighbours:
                if not isinstance(n, int):
                    self.touching[n].append(y.id)
        queue = [x.id for x in self.a if x.id not in self.a_to_b]
        queued = set(queue)
        while queue:
            i = heapq.heappop(queue)
            queued.discard(i)
            j = self._best_by_neighbours(self.a[i])
            if j is None:
                continue
            self.pair(i, j, "neighbours")
            for k in self._affected(i, j):
                if k not in self.a_to_b and k not in queued:
                    heapq.heappush(queue, k)
                    queued.add(k)

    def _affected(self, i: int, j: int) -> set[int]:
        """A layers whose candidates or agreements change when A's i pairs with B's j."""
        near = {n for n in self.a[i].neighbours if isinstance(n, int)}
        for n in self.b[j].neighbours:
            if isinstance(n, int) and n in self.b_to_a:
                near.update(k for k in self.a[self.b_to_a[n]].neighbours if isinstance(k, int))
        return near

    def _best_by_neighbours(self, x: Layer) -> int | None:
        """The one free compatible B layer with the most agreeing paired neighbours (and none
        disagreeing); None when there is none or a tie."""
        candidates: set[int] = set()
        for n in x.neighbours:
            m = self.mapped(n)
            if isinstance(m, int):
                candidates.update(k for k in self.b[m].neighbours if isinstance(k, int))
            elif m is not None:
                candidates.update(self.touching.get(m, ()))
        best, chosen = 0, []
        for j in sorted(candidates):
            y = self.b[j]
            if j in self.b_to_a or not self.fits(x, y):
                continue
            agree, disagree = self._agreement(x, y)
            if disagree or not agree or agree < best:
                continue
            if agree > best:
                best, chosen = agree, []
            chosen.append(j)
        return chosen[0] if len(chosen) == 1 else None


def compatible(x: Layer, y: Layer, grow: bool = False) -> bool:
    """Can y be x after pruning: same op family and structure, no channel count larger (with
    `grow`, none smaller: the diff of a pruned model against its original)."""
    if x.family != y.family or x.structure != y.structure:
        return False
    return _fits(x.in_ch, y.in_ch, grow) and _fits(x.out_ch, y.out_ch, grow)


def _fits(before: int | None, after: int | None, grow: bool) -> bool:
    if before is None or after is None:
        return before == after
    return after >= before if grow else after <= before


def _increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest subsequence of (a, b) pairs, sorted by a, whose b also increases."""
    tails: list[int] = []  # index into pairs of the smallest tail of each length
    parent = [-1] * len(pairs)
    for k, (_, b) in enumerate(pairs):
        lo, hi = 0, len(tails)
        while lo < hi:
            mid = (lo + hi) // 2
            if pairs[tails[mid]][1] < b:
                lo = mid + 1
            else:
                hi = mid
        parent[k] = tails[lo - 1] if lo else -1
        if lo == len(tails):
            tails.append(k)
        else:
            tails[lo] = k
    chain, k = [], tails[-1] if tails else -1
    while k >= 0:
        chain.append(pairs[k])
        k = parent[k]
    return chain[::-1]


def _lcs(scores: np.ndarray) -> list[tuple[int, int]]:
    """Order-preserving pairs (i, j) maximizing the total score (-inf: not allowed).

    D[i, j] = max(D[i-1, j], D[i, j-1], D[i-1, j-1] + S[i-1, j-1]); a row is computed at once:
    T = max(D[i-1, 1:], D[i-1, :-1] + S[i-1]), then D[i] = running maximum of [0, T].
    """
    n, m = scores.shape
    table = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        diagonal = table[i - 1, :-1] + scores[i - 1]
        table[i, 1:] = np.maximum(table[i - 1, 1:], diagonal)
        table[i] = np.maximum.accumulate(table[i])
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if table[i, j] == table[i - 1, j]:
            i -= 1
        elif table[i, j] == table[i, j - 1]:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


# --------------------------------------------------------------------------- rows


def _rows(matcher: _Matcher, pseudo: Mapping) -> list[dict]:
    """One row per A layer in A's order; B-only layers after the row of their predecessor."""
    rows: list[dict] = []
    after_b: dict[int, list[int]] = defaultdict(list)  # B id of the row before → B-only ids
    last = -1
    for y in matcher.b:
        if y.id in matcher.b_to_a:
            last = y.id
        else:
            after_b[last].append(y.id)
    for j in after_b.get(-1, []):
        rows.append(_b_only_row(matcher, matcher.b[j]))
    for x in matcher.a:
        rows.append(_a_row(matcher, x))
        j = matcher.a_to_b.get(x.id)
        for extra in after_b.get(j, []) if j is not None else []:
            rows.append(_b_only_row(matcher, matcher.b[extra]))
    for k, row in enumerate(rows):
        row["index"] = k
    return rows


def _row(op, status, how, reason, kept, a: Layer | None, b: Layer | None) -> dict:
    return {
        "index": 0,
        "op": op,
        "status": status,
        "matched_by": how,
        "reason": reason,
        "kept_ratio": kept,
        "block": "",
        "a": a.as_dict() if a else None,
        "b": b.as_dict() if b else None,
    }


def _a_row(matcher: _Matcher, x: Layer) -> dict:
    j = matcher.a_to_b.get(x.id)
    if j is not None:
        y = matcher.b[j]
        status = _paired_status(x, y)
        op = x.op if x.op == y.op else f"{x.op}/{y.op}"
        return _row(op, status, matcher.how[x.id], None, _kept(x, y), x, y)
    bypass = _bypass(matcher, x)
    if bypass:
        return _row(x.op, "bypassed", None, bypass, 0.0, x, None)
    if any(matcher.mapped(n) is not None for n in x.neighbours):
        reason = "no counterpart in B; " + _why(
            x, matcher.kinds_b, matcher.b_to_a, True, matcher.grow
        )
        return _row(x.op, "removed", None, reason, 0.0, x, None)
    reason = _why(x, matcher.kinds_b, matcher.b_to_a, True, matcher.grow)
    return _row(x.op, "unmatched", None, reason, None, x, None)


def _b_only_row(matcher: _Matcher, y: Layer) -> dict:
    back = {v: k for k, v in matcher.pseudo.items()}
    known = any(
        (isinstance(n, int) and n in matcher.b_to_a) or (not isinstance(n, int) and n in back)
        for n in y.neighbours
    )
    reason = _why(y, matcher.kinds_a, matcher.a_to_b, False, matcher.grow)
    if known:
        return _row(y.op, "added", None, "no counterpart in A; " + reason, None, None, y)
    return _row(y.op, "unmatched", None, reason, None, None, y)


def _paired_status(x: Layer, y: Layer) -> str:
    """same, pruned (nothing larger, something smaller) or resized. Weight shapes are compared
    only between layers of one op type (Gemm's weight may be MatMul's transposed)."""
    before, after = [x.in_ch, x.out_ch], [y.in_ch, y.out_ch]
    if x.op == y.op:
        before, after = before + _sizes(x.weight_shape), after + _sizes(y.weight_shape)
    if before == after:
        return "same"
    if len(before) == len(after) and all(
        a is None or b is None or b <= a for a, b in zip(before, after, strict=True)
    ):
        return "pruned"
    return "resized"


def _sizes(shape: tuple) -> list:
    return [d if isinstance(d, int) else None for d in shape]


def _kept(x: Layer, y: Layer) -> float | None:
    if x.out_ch and y.out_ch is not None:
        return y.out_ch / x.out_ch
    return None


def _bypass(matcher: _Matcher, x: Layer) -> str | None:
    """Why x counts as bypassed: every neighbour is paired, and in B the paired upstream layers
    feed each paired downstream layer directly. None otherwise."""
    ups = [matcher.mapped(n) for n in x.up]
    downs = [matcher.mapped(n) for n in x.down]
    if not ups or not downs or None in ups or None in downs:
        return None
    for d in downs:
        if isinstance(d, tuple):  # a graph output: B's output must come from x's upstream
            return None
        if not set(ups) <= set(matcher.b[d].up):
            return None
    names = ", ".join(_label(matcher, u) for u in ups)
    return f"in B, {names} feeds {', '.join(matcher.b[d].name for d in downs)} directly"


def _label(matcher: _Matcher, key) -> str:
    return matcher.b[key].name if isinstance(key, int) else f"input '{key[1]}'"


def _kinds(layers: list[Layer]) -> dict[tuple, list[Layer]]:
    """Layers by (op family, structure), and by (op family,) alone."""
    kinds: dict[tuple, list[Layer]] = defaultdict(list)
    for layer in layers:
        kinds[(layer.family, layer.structure)].append(layer)
        kinds[(layer.family,)].append(layer)
    return kinds


def _why(
    x: Layer, other: Mapping[tuple, list[Layer]], taken: Mapping, is_a: bool, grow: bool
) -> str:
    """Why no layer of the other graph (`other`: its `_kinds`) could pair with x (x in A when
    `is_a`)."""
    there = "B" if is_a else "A"
    if not other.get((x.family,)):
        return f"{there} has no {x.op} layer"
    shaped = other.get((x.family, x.structure), [])
    if not shaped:
        return f"no {x.op} in {there} has the same {_structure_text(x)}"
    fits = [y for y in shaped if (compatible(x, y, grow) if is_a else compatible(y, x, grow))]
    if not fits:
        more = "more" if is_a != grow else "fewer"
        return (
            f"every {x.op} in {there} with the same {_structure_text(x)} has {more} channels "
            f"than {x.in_ch}→{x.out_ch}"
        )
    free = [y for y in fits if y.id not in taken]
    if not free:
        return f"{_count(len(fits), 'compatible candidate')} in {there}, all paired elsewhere"
    return (
        f"{_count(len(free), 'compatible candidate')} left in {there}, none in a position or "
        "neighbourhood consistent with the paired layers"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _structure_text(x: Layer) -> str:
    if x.structure and x.structure[0] == "conv":
        kernel, strides, dilations = x.structure[1:4]
        return f"kernel {_by(kernel)}, strides {_by(strides)}, dilations {_by(dilations)}" + (
            ", depthwise" if x.structure[-1] else ""
        )
    if x.structure and x.structure[0] == "einsum":
        return f"equation {x.structure[1]}"
    return "layout"


def _by(values: Iterable) -> str:
    return "x".join(str(v) for v in values) or "-"


# --------------------------------------------------------------------------- blocks


def _assign_blocks(rows: list[dict], a: list[Layer], b: list[Layer]) -> str:
    """Set each row's block; return how blocks were made ("name" or "position").

    From module names when at least half the rows have one: the shallowest container depth
    giving at least min(MIN_NAME_BLOCKS, rows / 4) blocks (ResNet: 'layer1.0'; a decoder:
    'model.layers.3'; DenseNet: 'features.denseblock1'), if that is at most MAX_NAME_BLOCKS.
    Rows without a name join the block before them. Otherwise POSITION_BLOCKS runs of
    consecutive rows.
    """
    at = {side: {x.position: x for x in layers} for side, layers in (("a", a), ("b", b))}
    modules = [_row_module(row, at) for row in rows]
    named = [m for m in modules if m]
    if rows and 2 * len(named) >= len(rows):
        depth = _block_depth(named, min(MIN_NAME_BLOCKS, -(-len(rows) // 4)))
        if len({_block_at(m, depth) for m in named}) <= MAX_NAME_BLOCKS:
            previous = "(start)"
            for row, module in zip(rows, modules, strict=True):
                previous = _block_at(module, depth) if module else previous
                row["block"] = previous
            return "name"
    size = max(1, -(-len(rows) // POSITION_BLOCKS))
    for k, row in enumerate(rows):
        start = k // size * size
        row["block"] = f"layers {start + 1}-{min(start + size, len(rows))}"
    return "position"


def _block_depth(modules: list[str], wanted: int) -> int:
    """The shallowest depth giving `wanted` distinct blocks, else the one giving most."""
    deepest = max(len(_levels(m)) for m in modules)
    counts = [len({_block_at(m, d) for m in modules}) for d in range(1, deepest + 1)]
    for depth, count in enumerate(counts, start=1):
        if count >= wanted:
            return depth
    return counts.index(max(counts)) + 1


def _row_module(row: dict, at: Mapping[str, Mapping[int, Layer]]) -> str | None:
    """The module path of a row: A's layer's, else B's."""
    for side in ("a", "b"):
        if row[side] is not None:
            module = at[side][row[side]["position"]].module
            if module:
                return module
    return None


def _blocks(rows: list[dict]) -> list[dict]:
    """Parameters and MACs of the layers of each block, before and after, in row order."""
    order: list[str] = []
    totals: dict[str, dict] = {}
    for row in rows:
        name = row["block"]
        if name not in totals:
            order.append(name)
            totals[name] = {"name": name, "layers": 0, "params_a": 0, "params_b": 0}
            totals[name].update(macs_a=0, macs_b=0)
        block = totals[name]
        block["layers"] += 1
        for side in ("a", "b"):
            if row[side] is not None:
                block[f"params_{side}"] += row[side]["params"]
                block[f"macs_{side}"] += row[side]["macs"] or 0
    return [totals[name] for name in order]


# --------------------------------------------------------------------------- summaries


def _delta(a: dict, b: dict) -> dict:
    """B minus A, and B over A, for each count; per op type for ops and MACs."""
    result: dict = {}
    for key in ("params", "macs", "bytes", "nodes", "layers"):
        before, after = a[key], b[key]
        result[key] = after - before
        result[f"{key}_ratio"] = after / before if before else None
    for key in ("ops", "macs_by_op"):
        names = sorted(set(a[key]) | set(b[key]))
        result[key] = {
            n: b[key].get(n, 0) - a[key].get(n, 0)
            for n in names
            if b[key].get(n, 0) != a[key].get(n, 0)
        }
    return result


def _signatures(a: Side, b: Side) -> dict:
    """Inputs and outputs of both graphs, paired by name, else by position."""
    result: dict = {}
    for kind in ("inputs", "outputs"):
        xs, ys = getattr(a, kind), getattr(b, kind)
        result[kind] = _pair_signatures(xs, ys)
    result["differ"] = any(r["differs"] for k in ("inputs", "outputs") for r in result[k])
    return result


def _pair_signatures(xs: list[dict], ys: list[dict]) -> list[dict]:
    by_name = {y["name"]: y for y in ys}
    used: set[str] = set()
    rows = []
    for k, x in enumerate(xs):
        y = by_name.get(x["name"])
        if y is None and k < len(ys) and ys[k]["name"] not in {v["name"] for v in xs}:
            y = ys[k]
        if y is not None:
            used.add(y["name"])
        rows.append({"name": x["name"], "a": x, "b": y, "differs": x != y})
    for y in ys:
        if y["name"] not in used:
            rows.append({"name": y["name"], "a": None, "b": y, "differs": True})
    return rows


def _matching_summary(matcher: _Matcher, rows: list[dict]) -> dict:
    """Counts of paired and unpaired layers, how they were paired, and what was not."""
    statuses = Counter(row["status"] for row in rows)
    paired = len(matcher.a_to_b)
    not_matched = [
        {
            "side": "a" if row["a"] else "b",
            "layer": (row["a"] or row["b"])["name"],
            "op": row["op"],
            "status": row["status"],
            "reason": row["reason"],
        }
        for row in rows
        if row["status"] in ("bypassed", "removed", "added", "unmatched")
    ]
    a_n, b_n = len(matcher.a), len(matcher.b)
    text = (
        f"paired {paired} of {a_n} layers of A with {paired} of {b_n} of B "
        f"(by weight name {matcher.by['weight']}, node name {matcher.by['name']}, "
        f"position {matcher.by['position']}, neighbours {matcher.by['neighbours']}); "
        f"{a_n - paired} of A and {b_n - paired} of B left unpaired"
    )
    return {
        "a_layers": a_n,
        "b_layers": b_n,
        "matched": paired,
        "by": dict(matcher.by),
        "unmatched_a": a_n - paired,
        "unmatched_b": b_n - paired,
        "status_counts": {s: statuses.get(s, 0) for s in STATUSES},
        "not_matched": not_matched,
        "summary": text,
    }
