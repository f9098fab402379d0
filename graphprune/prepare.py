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

A graph input whose channel size is declared symbolic (or -1/0) but which a Conv, Gemm or
MatMul reads directly against a constant weight can only take the size the weight fixes; it is
declared so (`_pin_sizes_fixed_by_weights`), so that default inputs have the right width.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from math import prod

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from graphprune.edit import ConstantStore, set_dim
from graphprune.graph import GraphIndex, all_inputs, attribute
from graphprune.load import infer_shapes


def prepare(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return `model` normalized: a copy, or `model` itself when `in_place`."""
    model = model if in_place else _copy(model)
    declared = list(model.graph.value_info)  # what the file states; kept, never replaced
    _pin_sizes_fixed_by_weights(model)
    _fold_constant_identities(model)
    for _ in range(PREPARE_ROUNDS):  # a resolved -1 makes sizes read from its output static
        _fold_static_shape_arithmetic(model, declared)
        if not _resolve_inferred_reshape_entries(model, declared):
            break
    _unpack_packed_projections(model, declared)
    _unfold_merge_round_trips(model, declared)
    _untie_shared_vectors(model)
    return model


def _pin_sizes_fixed_by_weights(model: onnx.ModelProto) -> None:
    """Declare, in place, the static size of each free graph-input axis that a constant weight
    reads directly: Conv/ConvTranspose channels, the contraction axis of Gemm and MatMul."""
    index = GraphIndex.build(model)
    free = {v.name: v for v in model.graph.input if v.name not in index.constants}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not node.input or node.input[0] not in free:
            continue
        fixed = _weight_fixed_size(node, index)
        if fixed is None:
            continue
        axis, size = fixed
        dims = free[node.input[0]].type.tensor_type.shape.dim
        dim = dims[axis % len(dims)] if dims else None
        if dim is not None and not (dim.HasField("dim_value") and dim.dim_value > 0):
            set_dim(dim, size)


def _weight_fixed_size(node: onnx.NodeProto, index: GraphIndex) -> tuple[int, int] | None:
    """(axis of input 0, size) that the node's constant weight fixes, or None."""
    weight = index.constants.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.ndim < 2:
        return None
    if node.op_type == "Conv":
        return 1, int(weight.shape[1]) * attribute(node, "group", 1)
    if node.op_type == "ConvTranspose":
        return 1, int(weight.shape[0])
    if node.op_type == "Gemm":
        k = weight.shape[1] if attribute(node, "transB", 0) else weight.shape[0]
        return (0 if attribute(node, "transA", 0) else 1), int(k)
    if node.op_type == "MatMul":
        return -1, int(weight.shape[-2])
    return None


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


PREPARE_ROUNDS = 3


def _fold_static_shape_arithmetic(model: onnx.ModelProto, declared: list) -> None:
    """Replace nodes computable from constants and static sizes by their values.

    A `Shape` of a tensor with some dynamic dimensions is a partly known vector: its static
    entries (head counts, head_dim) are constants in disguise, its symbolic ones (batch,
    sequence) are not. A `Gather` or `Slice` that picks only static entries out of it is folded;
    the rest stays computed, so dynamic axes stay dynamic.
    """
    index = _shaped_index(model, declared)
    known: ChainMap[str, np.ndarray] = ChainMap({}, index.constants)
    partial: dict[str, list] = {}  # Shape outputs with some entries unknown: int or None each
    folded: dict[int, list[np.ndarray]] = {}
    mixed: list[str] = []  # outputs of Slices picking static and symbolic entries together
    for position, node in enumerate(model.graph.node):
        values = _evaluate(node, known, index)
        if values is None:
            values = _pick_static(node, known, partial, index)
            if values is None and _picks_mixed(node, partial):
                mixed.append(node.output[0])
        if values is None:
            continue
        folded[position] = values
        known.update(zip(node.output, values, strict=True))
    store = ConstantStore(model)
    for position in sorted(folded, reverse=True):
        node = model.graph.node[position]
        for name, value in zip(node.output, folded[position], strict=True):
            if name in index.graph_outputs:
                return  # a graph output stays computed; stop rather than half-fold
            store.add_named(name, value)
        del model.graph.node[position]
    for output in mixed:
        _split_mixed_slice(model, store, output, known, partial, index)


def _pick_static(
    node: onnx.NodeProto, known: Mapping[str, np.ndarray], partial: dict[str, list], index
) -> list[np.ndarray] | None:
    """Record a `Shape` of a partly static tensor in `partial`; fold a `Gather` (constant
    indices) or `Slice` (constant bounds) of such a vector when every entry it picks is
    static."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Shape":
        dims = index.shapes.get(node.input[0])
        if dims is not None:
            start, end = attribute(node, "start", 0), attribute(node, "end", None)
            partial[node.output[0]] = [d if isinstance(d, int) else None for d in dims][start:end]
        return None
    source = partial.get(node.input[0]) if node.input else None
    if source is None:
        return None
    entries = np.arange(len(source))
    if node.op_type == "Gather" and attribute(node, "axis", 0) == 0 and node.input[1] in known:
        picked = np.asarray(known[node.input[1]])
        if picked.dtype.kind not in "iu" or not np.all(
            (-len(source) <= picked) & (picked < len(source))
        ):
            return None
        picked = entries[picked]
    elif node.op_type == "Slice" and all(name in known for name in node.input[1:] if name):
        bounds = [np.asarray(known[name]).reshape(-1) if name else None for name in node.input[1:5]]
        bounds += [None] * (4 - len(bounds))
        starts, ends, axes, steps = bounds
        if len(starts) != 1 or (axes is not None and int(axes[0]) not in (0, -1)):
            return None
        step = 1 if steps is None else int(steps[0])
        if step == 0:
            return None
        picked = entries[slice(int(starts[0]), int(ends[0]), step)]
    else:
        return None
    values = [source[int(i)] for i in picked.reshape(-1)]
    if any(v is None for v in values):
        if node.op_type == "Slice" or picked.ndim == 1:
            partial[node.output[0]] = values  # a narrower partly known vector
        return None
    return [np.array(values, dtype=np.int64).reshape(picked.shape)]


def _picks_mixed(node: onnx.NodeProto, partial: dict[str, list]) -> bool:
    """A Slice of a partly known size vector whose result holds static and symbolic entries."""
    picked = partial.get(node.output[0]) if node.op_type == "Slice" else None
    return (
        bool(picked)
        and len(node.input) >= 3
        and node.input[0] in partial
        and None in picked
        and picked.count(None) < len(picked)
    )


def _split_mixed_slice(
    model: onnx.ModelProto,
    store: ConstantStore,
    output: str,
    known: Mapping[str, np.ndarray],
    partial: dict[str, list],
    index: GraphIndex,
) -> None:
    """Rewrite `Slice(v, a, b)` of a partly known size vector as its runs: static runs as
    constants, symbolic entries as `Gather(v, [entry])`, put in place of the Slice in the Concat
    that reads it (else concatenated anew). TorchScript's flatten target
    `Concat(Slice(Shape(x), 0, 2), [-1])` reads batch and channels at once; after this the
    channel count is a constant piece that rules rewrite, and `Shape` reads the batch only."""
    position = next(i for i, n in enumerate(model.graph.node) if output in n.output)
    node = model.graph.node[position]
    source, picked = partial[node.input[0]], partial[output]
    bounds = [np.asarray(known[name]).reshape(-1) if name else None for name in node.input[1:5]]
    bounds += [None] * (4 - len(bounds))
    starts, ends, _, steps = bounds
    step = 1 if steps is None else int(steps[0])
    entries = range(len(source))[slice(int(starts[0]), int(ends[0]), step)]
    pieces, nodes, run = [], [], []
    for offset, value in enumerate([*picked, None]):
        if value is not None:
            run.append(value)
            continue
        if run:  # a static run ends
            pieces.append(store.add(f"{node.output[0]}_static", np.array(run, dtype=np.int64)))
            run = []
        if offset < len(picked):  # a symbolic entry: read it at run time
            name = f"{output}_entry{offset}"
            nodes.append(_read_entry(model, store, index, node.input[0], entries[offset], name))
            pieces.append(name)
    readers = [n for n in model.graph.node if output in n.input]
    graph_outputs = {v.name for v in model.graph.output}
    if len(readers) == 1 and _is_vector_concat(readers[0]) and output not in graph_outputs:
        # the pieces go straight into the Concat that builds the target (one level, as the
        # exporters write it, so later steps find each entry in one constant piece)
        inputs = list(readers[0].input)
        at = inputs.index(output)
        readers[0].ClearField("input")
        readers[0].input.extend([*inputs[:at], *pieces, *inputs[at + 1 :]])
    else:
        nodes.append(onnx.helper.make_node("Concat", pieces, [output], axis=0))
    label = node.name or output
    del model.graph.node[position]
    for k, made in enumerate(nodes):
        made.name = f"{label}_split{k}"
        model.graph.node.insert(position + k, made)


def _read_entry(
    model: onnx.ModelProto,
    store: ConstantStore,
    index: GraphIndex,
    vector: str,
    entry: int,
    name: str,
) -> onnx.NodeProto:
    """A node computing [vector[entry]]: `Shape(t, start, end)` when `vector` is a Shape of t
    (opset >= 15; onnx's data propagation sees through it, so shapes downstream stay known),
    else `Gather(vector, [entry])`."""
    producer = next((n for n in model.graph.node if vector in n.output), None)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if producer is not None and producer.op_type == "Shape" and opset >= 15:
        rank = index.rank(producer.input[0])
        if rank is not None:
            axis = range(rank)[attribute(producer, "start", 0) : attribute(producer, "end", rank)]
            at = axis[entry]
            return onnx.helper.make_node("Shape", [producer.input[0]], [name], start=at, end=at + 1)
    index = store.add(f"{name}_index", np.array([entry], dtype=np.int64))
    return onnx.helper.make_node("Gather", [vector, index], [name], axis=0)


def _is_vector_concat(node: onnx.NodeProto) -> bool:
    return (
        node.op_type == "Concat" and node.domain in ("", "ai.onnx") and attribute(node, "axis") == 0
    )


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
    reads from the literal it comes from (or, for an entry computed at run time, whatever
    inference said: never a guessed 1).
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
            if dim != 1:
                dims.append(dim)
                continue
            entry = shape_entry(ctx, 1, k)
            if entry is None:  # a size read at run time: what inference said, if anything
                dims.append(output[k])
            else:
                dims.append(entry.value if entry.value > 0 else 1)
        sizes[node.output[0]] = dims
    return sizes


def _resolve_inferred_reshape_entries(model: onnx.ModelProto, declared: list) -> int:
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
        return 0  # every target is a literal already (most CNNs): nothing to resolve
    total = 0
    for _ in range(RESOLVE_ROUNDS):  # a resolved split makes the matching merge resolvable
        resolved = _resolve_reshape_entries_once(model, declared)
        if not resolved:
            break
        total += resolved
    return total


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
        total = prod(d for d in source if isinstance(d, int))
        if symbols == named and all(e > 0 for e in literals) and total % prod(literals) == 0:
            value = total // prod(literals)
        else:  # symbols inference named apart (Swin's shifted windows): what the reader needs
            value = _size_the_reader_needs(index, node, entries.index(-1), length)
        if value is None:
            continue
        minus_one = shape_entry(ctx, 1, entries.index(-1))
        holder = model.graph.node[minus_one.node]
        name = store.private_copy(holder, minus_one.input_index)
        values = store.get(name).copy()
        values.reshape(-1)[minus_one.entry] = value
        store.set(name, values)
        resolved += 1
    return resolved


def _size_the_reader_needs(
    index: GraphIndex, reshape: onnx.NodeProto, entry: int, length: int
) -> int | None:
    """The -1 of a Reshape whose last axis is the contraction axis of a MatMul by a constant
    [K, N] weight: the model runs only when that axis is K, so the -1 is K."""
    readers = index.consumers.get(reshape.output[0], [])
    if entry != length - 1 or len(readers) != 1 or reshape.output[0] in index.graph_outputs:
        return None
    reader = index.node(readers[0])
    if reader.op_type != "MatMul" or reader.domain not in ("", "ai.onnx"):
        return None
    if reader.input[0] != reshape.output[0] or not index.is_constant(reader.input[1]):
        return None
    weight = index.shapes.get(reader.input[1])
    return weight[0] if weight is not None and len(weight) == 2 else None


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


_AXIS_MOVES = ("Unsqueeze", "Transpose", "Squeeze")


def _unpack_packed_projections(model: onnx.ModelProto, declared: list) -> None:
    """Replace `Gather(k)` of a packed projection by the Slice it is.

    torch's nn.MultiheadAttention projects q, k and v with one [E, 3E] weight, then
    `unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2)` and picks `proj[k]`:
    Reshape [.., 3E] -> [.., 3, E], Unsqueeze, Transpose, Squeeze, Gather(k) on the 3-axis. No
    rule carries E through a gathered axis, yet the result is p[.., k*E:(k+1)*E]. When the
    Gather's input is Reshape's output with only unit axes added and removed and the 3-axis
    moved to the front, every other axis in its order, the Gather becomes that Slice.
    """
    moved = {m.output[0] for m in _axis_movers(model)}
    candidates = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in moved]
    if not candidates:
        return
    index = _shaped_index(model, declared)
    store = ConstantStore(model)
    for gather in candidates:
        found = _packed_slice(index, gather)
        if found is None:
            continue
        source, start, width = found
        bounds = [
            store.add(f"{gather.output[0]}_{what}", np.array([v], dtype=np.int64))
            for what, v in (("start", start), ("end", start + width), ("axis", -1))
        ]
        sliced = onnx.helper.make_node(
            "Slice", [source, *bounds], [gather.output[0]], name=f"{gather.name}_unpacked"
        )
        gather.CopyFrom(sliced)
    _remove_dead_nodes(model)


def _axis_movers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in _AXIS_MOVES and n.domain in ("", "ai.onnx")]


def _packed_slice(index: GraphIndex, gather: onnx.NodeProto) -> tuple[str, int, int] | None:
    """(p, start, width) when `gather` picks p[.., start:start+width] (see above)."""
    picked = index.const(gather.input[1])
    if attribute(gather, "axis", 0) != 0 or picked is None or picked.size != 1:
        return None
    chain, name = [], gather.input[0]
    while True:  # back through the axis moves to the Reshape
        position = index.producer.get(name)
        node = index.node(position) if position is not None else None
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Reshape":
            break
        if node.op_type not in _AXIS_MOVES or len(chain) > 4:
            return None
        chain.append(node)
        name = node.input[0]
    source, shapes = node.input[0], [index.shapes.get(t) for t in (node.input[0], node.output[0])]
    if any(s is None for s in shapes) or len(shapes[1]) != len(shapes[0]) + 1:
        return None
    before, after = shapes
    groups, width = after[-2], after[-1]
    if not (isinstance(groups, int) and isinstance(width, int) and before[-1] == groups * width):
        return None
    if list(before[:-1]) != list(after[:-2]):
        return None
    labels: list = list(range(len(after)))  # Reshape output axes; None for an added unit axis
    for move in reversed(chain):
        labels = _moved_labels(index, move, labels)
        if labels is None:
            return None
    rank = len(after)
    if labels != [rank - 2, *range(rank - 2), rank - 1]:
        return None
    k = int(picked.reshape(-1)[0]) % groups
    return source, k * width, width


def _moved_labels(index: GraphIndex, node: onnx.NodeProto, labels: list) -> list | None:
    """Where each axis label goes through an Unsqueeze, Transpose or Squeeze; None when a
    Squeeze removes an axis that was not added as a unit axis."""
    ctx_axes = _const_or_attr(index, node, "axes")
    if node.op_type == "Transpose":
        perm = attribute(node, "perm") or list(reversed(range(len(labels))))
        return [labels[p] for p in perm]
    if ctx_axes is None:
        return None
    if node.op_type == "Unsqueeze":
        out = list(labels)
        for axis in sorted(a % (len(labels) + len(ctx_axes)) for a in ctx_axes):
            out.insert(axis, None)
        return out
    removed = {a % len(labels) for a in ctx_axes}
    if any(labels[a] is not None for a in removed):
        return None
    return [label for a, label in enumerate(labels) if a not in removed]


def _const_or_attr(index: GraphIndex, node: onnx.NodeProto, name: str) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        value = index.const(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    value = attribute(node, name)
    return None if value is None else [int(v) for v in value]


def _unfold_merge_round_trips(model: onnx.ModelProto, declared: list) -> None:
    """Replace Reshape (merge) -> Transpose -> Reshape (split back) by the one Transpose it is.

    Dynamo writes sdpa's k^T as `Reshape(k, [-1, s, d])`, `Transpose(0, 2, 1)`, `Reshape([b, h,
    d, s])`: batch and heads are merged into one symbolic axis and split back. No rule can carry
    heads through the merged axis, yet the three ops only swap the last two axes. When the first
    Reshape merges one run of adjacent axes and keeps every other axis as it is, the Transpose
    moves the merged axis as a whole, and the second Reshape splits it into the same sizes in
    the same order (symbols compared by name) and keeps every other axis, the result is
    `Transpose(x, perm)` with the run kept together: same values, every size explicit.
    """
    if not any(n.op_type == "Reshape" for n in model.graph.node):
        return
    index = _shaped_index(model, declared)
    replaced, heads = {}, {}
    for position, node in enumerate(model.graph.node):
        if node.op_type == "Reshape" and node.domain in ("", "ai.onnx"):
            found = _round_trip(index, node)
            if found is not None:
                replaced[position] = found
            elif (split := _heads_out_of_batch(index, node)) is not None:
                heads[position] = split
    if not replaced and not heads:
        return
    graph = model.graph
    store = ConstantStore(model)
    for position in sorted({*replaced, *heads}, reverse=True):  # inserting shifts only later
        old = graph.node[position]
        label = old.name or old.output[0]
        if position in replaced:
            source, perm = replaced[position]
        else:  # Reshape(x, [0, 0, h, d]), then the one Transpose
            x, head_count, head_dim = heads[position]
            target = store.add(f"{label}_heads", np.array([0, 0, head_count, head_dim]))
            source, perm = f"{label}_heads_split", [1, 2, 0, 3]
            split = onnx.helper.make_node("Reshape", [x, target], [source], name=f"{label}_heads")
            graph.node.insert(position, split)
            position += 1
        new = onnx.helper.make_node(
            "Transpose", [source], [old.output[0]], name=f"{label}_unfolded", perm=perm
        )
        graph.node[position].CopyFrom(new)
    _remove_dead_nodes(model)


def _heads_out_of_batch(index: GraphIndex, split: onnx.NodeProto) -> tuple[str, int, int] | None:
    """(x, h, d) when `split` ends torch's multi-head attention fold of heads into the batch.

    `F.multi_head_attention_forward` (nn.MultiheadAttention) writes, sequence first,
    `q.view(s, b * h, d).transpose(0, 1)` and later `.view(b, h, s, d)`: Reshape
    [s, b, h*d] -> [s, b*h, d], Transpose (1, 0, 2), Reshape -> [b, h, s, d]. The heads are
    merged into the (symbolic) batch, where no rule can carry them; the same values are
    `Transpose(Reshape(x, [s, b, h, d]), (1, 2, 0, 3))`, written with 0 for s and b so that
    they stay dynamic and h a constant the rules rewrite."""
    transpose = _sole_producer(index, split.input[0], "Transpose")
    merge = transpose and _sole_producer(index, transpose.input[0], "Reshape")
    if merge is None or (attribute(transpose, "perm") or []) != [1, 0, 2]:
        return None
    x, y, w = merge.input[0], merge.output[0], split.output[0]
    xs, ys, ws = (index.shapes.get(t) for t in (x, y, w))
    if xs is None or ys is None or ws is None or (len(xs), len(ys), len(ws)) != (3, 3, 4):
        return None
    (s, b, width), (s_y, _, head_dim), (b_w, head_count, s_w, d_w) = xs, ys, ws
    static = all(isinstance(v, int) for v in (width, head_dim, head_count, d_w))
    if not static or head_dim != d_w or head_count * head_dim != width:
        return None
    if not (s == s_y == s_w and b == b_w) or (isinstance(b, int) and b == head_count):
        return None  # sizes that do not pin the fold down (b == h would be ambiguous)
    if isinstance(s, int) and isinstance(b, int):
        return None  # all static: the rules carry the reshapes as they are
    return x, head_count, head_dim


def _round_trip(index: GraphIndex, split: onnx.NodeProto) -> tuple[str, list[int]] | None:
    """(x, perm) when `split` ends a merge -> Transpose -> split round trip of x."""
    from graphprune.ops import reshape_segments

    transpose = _sole_producer(index, split.input[0], "Transpose")
    merge = transpose and _sole_producer(index, transpose.input[0], "Reshape")
    if merge is None:
        return None
    x, y, z, w = merge.input[0], merge.output[0], split.input[0], split.output[0]
    shapes = [index.shapes.get(t) for t in (x, y, z, w)]
    if any(s is None or None in s for s in shapes):
        return None
    xs, ys, zs, ws = shapes
    perm = attribute(transpose, "perm") or list(reversed(range(len(ys))))
    merged = _one_merge(reshape_segments(xs, ys), xs, ys)
    if merged is None:
        return None
    run, m = merged  # x's axes `run` are y's axis m
    unmerged = _one_merge(reshape_segments(ws, zs), ws, zs)
    if (
        unmerged is None
        or perm[unmerged[1]] != m
        or [ws[a] for a in unmerged[0]] != [xs[a] for a in run]
    ):
        return None
    if not any(isinstance(xs[a], str) for a in run):
        return None  # a static merge: the rules carry it already
    to_x = _one_to_one(reshape_segments(xs, ys))  # y axis -> x axis, outside the run
    result = []
    for j in range(len(zs)):
        result.extend(run if perm[j] == m else [to_x[perm[j]]])
    if [xs[a] for a in result] != list(ws):
        return None
    return x, result


def _one_merge(segments, src, dst) -> tuple[list[int], int] | None:
    """(run of src axes, dst axis) when the segments keep every axis one to one with the same
    size except for one run of at least two src axes merged into one dst axis."""
    if segments is None:
        return None
    merges = []
    for src_axes, dst_axes in segments:
        if len(src_axes) == 1 and len(dst_axes) == 1 and src[src_axes[0]] == dst[dst_axes[0]]:
            continue
        if len(src_axes) >= 2 and len(dst_axes) == 1:
            merges.append((src_axes, dst_axes[0]))
        else:
            return None
    return merges[0] if len(merges) == 1 else None


def _one_to_one(segments) -> dict[int, int]:
    return {dst[0]: src[0] for src, dst in segments if len(src) == 1 and len(dst) == 1}


def _sole_producer(index: GraphIndex, name: str, op_type: str) -> onnx.NodeProto | None:
    """The node of type `op_type` that produces `name`, when `name` has no other reader."""
    position = index.producer.get(name)
    if position is None or len(index.consumers.get(name, [])) != 1 or name in index.graph_outputs:
        return None
    node = index.node(position)
    return node if node.op_type == op_type and node.domain in ("", "ai.onnx") else None


def _remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Delete nodes whose outputs nothing reads (what a rewrite leaves behind)."""
    graph = model.graph
    while True:
        used = {o.name for o in graph.output} | {n for node in graph.node for n in all_inputs(node)}
        dead = [i for i, node in enumerate(graph.node) if not used.intersection(node.output)]
        if not dead:
            return
        for i in reversed(dead):
            del graph.node[i]
