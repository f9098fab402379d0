"""Prepare: normalize a loaded graph before analysis, without changing what it computes.

Exporters deduplicate equal tensors: the TorchScript exporter replaces every repeat by
`Identity(first_copy)`, and several nodes may read one bias vector. Left alone, such sharing
couples layers that have nothing in common but equal values (typically the all-zero biases of
freshly folded BatchNorms). We undo it where it is accidental:

- `Identity` of a 1-D constant becomes a constant of its own (readers of `Identity` of a larger
  constant read the constant itself: a tied embedding stays one tensor);
- a 1-D float constant read by several nodes gets one copy per reader.

Shared weights of rank >= 2 stay shared: they are real ties (tied embeddings) and keep coupling
their readers.

Exporters also compute sizes at run time: `Shape -> Gather -> ... -> Pad/Slice/Reshape`
(TorchScript's TF-"SAME" padding, chunk bounds, flatten targets). Where the shapes are static
those values are constants in disguise; we fold them (`Shape` of a fully static tensor, and any
deterministic default-domain op whose inputs are all constants), so rules see literal pads,
bounds and targets instead of blocking on a subgraph.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from math import prod

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from graphprune.edit import ConstantStore, set_dim
from graphprune.graph import GraphIndex, attribute
from graphprune.load import infer_shapes


def prepare(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return `model` normalized: a copy, or `model` itself when `in_place`."""
    model = model if in_place else _copy(model)
    declared = list(model.graph.value_info)  # what the file states; kept, never replaced
    _fold_constant_identities(model)
    _fold_static_shape_arithmetic(model, declared)
    _resolve_inferred_reshape_entries(model, declared)
    _untie_shared_vectors(model)
    return model


def _shaped_index(model: onnx.ModelProto, declared: list) -> GraphIndex:
    """An index with shapes inferred for the graph as it is now. Inference starts from the
    declared types only (ours from an earlier step are stale after its edits), and the model
    is left holding just those."""
    del model.graph.value_info[:]
    model.graph.value_info.extend(declared)
    index = GraphIndex.build(infer_shapes(model, in_place=True))  # copies the shapes it reads
    del model.graph.value_info[:]
    model.graph.value_info.extend(declared)
    return index


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _fold_constant_identities(model: onnx.ModelProto) -> None:
    index = GraphIndex.build(model)
    store = ConstantStore(model)
    folded = []
    renamed: dict[str, str] = {}
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        source, target = node.input[0], node.output[0]
        if not index.is_constant(source) or target in index.graph_outputs:
            continue
        if len(index.constants.shape(source)) <= 1:
            store.add_named(target, index.constants[source])
        else:
            renamed[target] = source
        folded.append(position)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for position in reversed(folded):
        del model.graph.node[position]


def _untie_shared_vectors(model: onnx.ModelProto) -> None:
    index = GraphIndex.build(model)
    store = ConstantStore(model)
    for name in index.constants:
        readers = index.consumers.get(name, [])
        vector = len(index.constants.shape(name)) == 1 and index.constants.is_float(name)
        if not vector or len(readers) < 2:
            continue
        for position in readers[1:]:
            node = model.graph.node[position]
            for i, input_name in enumerate(node.input):
                if input_name == name:
                    store.private_copy(node, i)


FOLD_MAX_ELEMENTS = 65536  # folding never materializes big tensors (ConstantOfShape masks, ...)
NEVER_FOLD = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Constant",
}


def _fold_static_shape_arithmetic(model: onnx.ModelProto, declared: list) -> None:
    """Replace nodes computable from constants and static shapes by their values."""
    index = _shaped_index(model, declared)
    known: ChainMap[str, np.ndarray] = ChainMap({}, index.constants)
    folded: dict[int, list[np.ndarray]] = {}
    for position, node in enumerate(model.graph.node):
        values = _evaluate(node, known, index)
        if values is None:
            continue
        folded[position] = values
        known.update(zip(node.output, values, strict=True))
    if not folded:
        return
    store = ConstantStore(model)
    for position in sorted(folded, reverse=True):
        node = model.graph.node[position]
        for name, value in zip(node.output, folded[position], strict=True):
            if name in index.graph_outputs:
                return  # a graph output stays computed; stop rather than half-fold
            store.add_named(name, value)
        del model.graph.node[position]


def _evaluate(
    node: onnx.NodeProto, known: Mapping[str, np.ndarray], index: GraphIndex
) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in NEVER_FOLD or not node.output:
        return None
    if node.op_type == "Shape":
        dims = index.shapes.get(node.input[0])
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        start, end = attribute(node, "start", 0), attribute(node, "end", None)
        return [np.array(dims[start:end], dtype=np.int64)]
    inputs = [name for name in node.input if name]
    if not inputs or not all(name in known for name in inputs):
        return None
    if any(index.constants.is_float(n) for n in inputs if n in index.constants):
        return None  # shape arithmetic is integer; folding a weight transform would copy it
    if any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for attr in node.attribute
    ):
        return None
    try:
        outputs = ReferenceEvaluator(_single_node_model(node, index.opset)).run(
            None, {name: known[name] for name in inputs}
        )
    except Exception:  # an op the reference cannot run stays in the graph, unfolded
        return None
    if sum(np.asarray(o).size for o in outputs) > FOLD_MAX_ELEMENTS:
        return None
    return [np.asarray(o) for o in outputs]


def _single_node_model(node: onnx.NodeProto, opset: int) -> onnx.ModelProto:
    inputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.input if name]
    outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def refine_shapes(model: onnx.ModelProto) -> None:
    """Give outputs the sizes inference missed, in place (see the two cases below)."""
    index = GraphIndex.build(model)
    refined = {**_expand_sizes(model, index), **_fused_attention_sizes(model, index)}
    known = {v.name for v in model.graph.value_info}
    for name in refined:
        if name not in known and name not in index.graph_outputs:
            model.graph.value_info.append(
                onnx.helper.make_tensor_value_info(
                    name, index.dtypes.get(name, onnx.TensorProto.FLOAT), None
                )
            )
    for value in model.graph.value_info:
        if value.name in refined:
            _set_dims(value, refined[value.name])


def _set_dims(value: onnx.ValueInfoProto, dims: list) -> None:
    shape = value.type.tensor_type.shape
    shape.Clear()
    for size in dims:
        set_dim(shape.dim.add(), size)


def _fused_attention_sizes(model: onnx.ModelProto, index: GraphIndex) -> dict[str, list]:
    """com.microsoft MultiHeadAttention / GroupQueryAttention output 0 is [B, S, query width]:
    onnx does not know these ops and onnxruntime's symbolic inference gives up on some graphs."""
    sizes = {}
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in (
            "MultiHeadAttention",
            "GroupQueryAttention",
        ):
            query = index.shapes.get(node.input[0])
            if query is not None and len(query) == 3 and index.shapes.get(node.output[0]) is None:
                sizes[node.output[0]] = list(query)
    return sizes


def _expand_sizes(model: onnx.ModelProto, index: GraphIndex) -> dict[str, list]:
    """Expand outputs inference missed.

    Inference cannot see through TorchScript's `Where(Equal(t, -1), 1, t)` expand targets and
    names those output dims `unk__N`; the following reshape then cannot be factorized. Each
    output dim is the input's where that is not 1, else the target entry, which `shape_entry`
    reads from the literal it comes from.
    """
    from graphprune.ops import RuleContext, shape_entry

    sizes = {}
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Expand" or node.domain not in ("", "ai.onnx"):
            continue
        source, output = index.shapes.get(node.input[0]), index.shapes.get(node.output[0])
        if source is None or output is None or len(source) != len(output):
            continue
        ctx = RuleContext(index, position, sink=None)
        dims = []
        for k, dim in enumerate(source):
            entry = shape_entry(ctx, 1, k) if dim == 1 else None
            dims.append(dim if dim != 1 else (entry.value if entry and entry.value > 0 else 1))
        sizes[node.output[0]] = dims
    return sizes


def _resolve_inferred_reshape_entries(model: onnx.ModelProto, declared: list) -> None:
    """Write the value of a Reshape target's -1 where the rest of the target determines it.

    Exporters split heads with `[batch, seq, -1, head_dim]`, batch and seq read at run time
    from some tensor's Shape. With symbolic batch and seq, inference cannot resolve the -1, so
    the head axis is unknown downstream and no rule can carry it. When the target's other
    entries are literals or sizes of the same symbols as the reshaped tensor's, the -1 is
    (product of its static dims) / (product of the literals): we write that number into a
    private copy of the constant piece that holds the -1. Same function, every size known.
    """
    literal = {t.name for t in model.graph.initializer}
    literal |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    if all(n.op_type != "Reshape" or n.input[1] in literal for n in model.graph.node):
        return  # every target is a literal already (most CNNs): nothing to resolve
    for _ in range(RESOLVE_ROUNDS):  # a resolved split makes the matching merge resolvable
        if not _resolve_reshape_entries_once(model, declared):
            return


RESOLVE_ROUNDS = 3


def _resolve_reshape_entries_once(model: onnx.ModelProto, declared: list) -> int:
    from graphprune.ops import RuleContext, shape_entry

    index = _shaped_index(model, declared)
    store = ConstantStore(model)
    resolved = 0
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        source, length = index.shapes.get(node.input[0]), index.static_size(node.input[1], 0)
        if source is None or length is None or None in source:
            continue
        if len(index.consumers.get(node.input[1], [])) != 1:
            continue  # a target shared by several reshapes (q and k in GQA) is not ours to edit
        ctx = RuleContext(index, position, sink=None)
        entries = [_entry_size(ctx, index, k, shape_entry) for k in range(length)]
        if entries.count(-1) != 1 or None in entries:
            continue
        symbols = sorted(d for d in source if isinstance(d, str))
        named = sorted(e for e in entries if isinstance(e, str))
        literals = [e for e in entries if isinstance(e, int) and e != -1]
        if symbols != named or any(e <= 0 for e in literals):
            continue
        total = prod(d for d in source if isinstance(d, int))
        if total % prod(literals):
            continue
        minus_one = shape_entry(ctx, 1, entries.index(-1))
        holder = model.graph.node[minus_one.node]
        name = store.private_copy(holder, minus_one.input_index)
        values = store.get(name).copy()
        values.reshape(-1)[minus_one.entry] = total // prod(literals)
        store.set(name, values)
        resolved += 1
    return resolved


def _entry_size(ctx, index: GraphIndex, k: int, shape_entry) -> int | str | None:
    """Entry k of the node's size vector: a literal, the symbol of a `Shape`-read dimension,
    or None when unknown."""
    literal = shape_entry(ctx, 1, k)
    if literal is not None:
        return literal.value
    concat = index.node(index.producer[ctx.input(1)]) if ctx.input(1) in index.producer else None
    if concat is None or concat.op_type != "Concat":
        return None
    offset = 0
    for piece in concat.input:
        length = index.static_size(piece, 0)
        if length is None:
            return None
        if offset <= k < offset + length:
            return _shape_read(index, piece, k - offset)
        offset += length
    return None


def _shape_read(index: GraphIndex, name: str, k: int) -> int | str | None:
    """The dimension a Shape-derived vector holds at k: Unsqueeze(Gather(Shape(t), j)) or
    Shape(t, start=j, end=j+1) (the two exporters' ways of reading one size)."""
    node = index.node(index.producer[name]) if name in index.producer else None
    if node is not None and node.op_type == "Unsqueeze":
        node = (
            index.node(index.producer[node.input[0]]) if node.input[0] in index.producer else None
        )
    if node is None:
        return None
    if node.op_type == "Gather":
        picked = index.const(node.input[1])
        shape_node = (
            index.node(index.producer[node.input[0]]) if node.input[0] in index.producer else None
        )
        if picked is None or shape_node is None or shape_node.op_type != "Shape":
            return None
        start = attribute(shape_node, "start", 0)
        return _dim_of(index, shape_node.input[0], start + int(np.asarray(picked).reshape(-1)[0]))
    if node.op_type == "Shape":
        return _dim_of(index, node.input[0], attribute(node, "start", 0) + k)
    return None


def _dim_of(index: GraphIndex, tensor: str, axis: int) -> int | str | None:
    shape = index.shapes.get(tensor)
    return shape[axis] if shape is not None and 0 <= axis < len(shape) else None
