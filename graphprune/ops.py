"""The op table: every op's channel rule, written once, read by analysis, scoring and rewriting.

A *channel space* is one axis of one tensor, `Space(tensor, axis)`. A rule looks at one node and
says, with explicit index relations, which index of which space is the same channel as which
index of another (`ctx.link`). It also says which constant slices *produce* a channel (role
`out`), *read* it (role `in`), or only have to follow it (role `stat`, e.g. BatchNorm running
statistics), and which attributes or shape constants encode a size that must be rewritten
(`ctx.fix`). Nothing else is known about an op.

Whatever a rule does not link is not handled: the closure check in `depgraph` blocks any group
in which a node touches a space its rule did not link, so an op without a rule is a barrier and
an op with a rule is a barrier on the axes it cannot map. Nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from math import prod

import numpy as np
import onnx

from graphprune.edit import ConstantStore
from graphprune.graph import GraphIndex, all_inputs, attribute, node_label


@dataclass(frozen=True, order=True)
class Space:
    """One axis of one tensor: the thing whose indices are channels."""

    tensor: str
    axis: int

    def __str__(self) -> str:
        return f"{self.tensor}[axis {self.axis}]"


class Role(str, Enum):
    OUT = "out"  # the slice produces or transforms the channel (conv rows, BN scale, biases)
    IN = "in"  # the slice reads the channel (the next layer's input columns)
    STAT = "stat"  # must follow the channel but is not a parameter (BN running mean and var)


# ---------------------------------------------------------------------------------------------
# Fixes: sizes written in attributes and shape constants, recomputed after pruning.
# ---------------------------------------------------------------------------------------------

NewSize = Callable[[Space], int]
Kept = Callable[[Space], np.ndarray]


@dataclass(frozen=True)
class AttrFix:
    """Integer attribute = new size of `space` // `per` (Conv `group`, GroupNorm `num_groups`)."""

    node: int
    name: str
    space: Space
    per: int = 1

    @property
    def spaces(self) -> tuple[Space, ...]:
        return (self.space,)

    def apply(self, model: onnx.ModelProto, store: ConstantStore, size: NewSize, kept: Kept):
        node = model.graph.node[self.node]
        _set_attribute(node, self.name, size(self.space) // self.per)


@dataclass(frozen=True)
class ShapeEntryFix:
    """Entry `entry` of the 1-D int constant at input `input_index` of node = new size of `space`
    (Reshape / Expand targets, Resize `sizes`)."""

    node: int
    input_index: int
    entry: int
    space: Space

    @property
    def spaces(self) -> tuple[Space, ...]:
        return (self.space,)

    def apply(self, model: onnx.ModelProto, store: ConstantStore, size: NewSize, kept: Kept):
        node = model.graph.node[self.node]
        name = store.private_copy(node, self.input_index)
        values = store.get(name).copy()
        values[self.entry] = size(self.space)
        store.set(name, values)


@dataclass(frozen=True)
class SplitFix:
    """Split sizes = new sizes of the outputs' split-axis spaces."""

    node: int
    outputs: tuple[Space, ...]

    @property
    def spaces(self) -> tuple[Space, ...]:
        return self.outputs

    def apply(self, model: onnx.ModelProto, store: ConstantStore, size: NewSize, kept: Kept):
        node = model.graph.node[self.node]
        sizes = np.array([size(space) for space in self.outputs], dtype=np.int64)
        _remove_attribute(node, "num_outputs")
        if _opset(model) < 13:
            _set_attribute(node, "split", [int(s) for s in sizes])
            return
        name = store.add(f"{node.name or node.output[0]}_split", sizes)
        if len(node.input) > 1:
            node.input[1] = name
        else:
            node.input.append(name)


@dataclass(frozen=True)
class SliceFix:
    """Slice bounds on one axis: the kept inputs before `start` shift the new start."""

    node: int
    position: int  # index into the starts/ends vectors
    source: Space
    start: int
    result: Space

    @property
    def spaces(self) -> tuple[Space, ...]:
        return (self.source, self.result)

    def apply(self, model: onnx.ModelProto, store: ConstantStore, size: NewSize, kept: Kept):
        node = model.graph.node[self.node]
        new_start = int(np.count_nonzero(kept(self.source) < self.start))
        for input_index, value in ((1, new_start), (2, new_start + size(self.result))):
            name = store.private_copy(node, input_index)
            values = store.get(name).copy()
            values[self.position] = value
            store.set(name, values)


Fix = AttrFix | ShapeEntryFix | SplitFix | SliceFix


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    _remove_attribute(node, name)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _remove_attribute(node: onnx.NodeProto, name: str) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            return


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---------------------------------------------------------------------------------------------
# The context a rule writes into.
# ---------------------------------------------------------------------------------------------


MAX_CHANNELS = 2**31  # a wider axis is a corrupt size, not channels (its index map would not fit)


class RuleContext:
    """What a rule sees of the graph, and the three things it can say about it."""

    def __init__(self, index: GraphIndex, position: int, sink):
        self.index = index
        self.position = position
        self.node = index.node(position)
        self.label = node_label(self.node, position)
        self._sink = sink

    # -- reading ---------------------------------------------------------------------------
    def input(self, i: int) -> str:
        return self.node.input[i] if i < len(self.node.input) else ""

    def output(self, i: int) -> str:
        return self.node.output[i] if i < len(self.node.output) else ""

    def rank(self, name: str) -> int | None:
        return self.index.rank(name) if name else None

    def size(self, name: str, axis: int) -> int | None:
        return self.index.static_size(name, axis) if name else None

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The static shape of `name`, or None if any dimension is unknown or symbolic."""
        dims = self.index.shapes.get(name) if name else None
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        return tuple(dims)

    def const(self, name: str) -> np.ndarray | None:
        return self.index.const(name)

    def attr(self, name: str, default=None):
        return attribute(self.node, name, default)

    def ints_input_or_attr(self, input_index: int, attr_name: str) -> list[int] | None:
        """A list of ints given as a constant input (newer opsets) or an attribute (older)."""
        if self.input(input_index):
            value = self.const(self.input(input_index))
            return None if value is None else [int(v) for v in value.reshape(-1)]
        value = self.attr(attr_name)
        return None if value is None else [int(v) for v in value]

    # -- saying ----------------------------------------------------------------------------
    def link(
        self,
        a: Space,
        b: Space,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
        piece: bool = False,
    ) -> None:
        """Index pairs[0][k] of `a` is the same channel as index pairs[1][k] of `b`.
        Without pairs: the identity (sizes must match). Spaces of unknown or unit size are not
        channels and are skipped, except a `piece` of a Concat or Split: its one index is a
        channel of the joined axis (which then keeps it: no space is ever emptied)."""
        size_a, size_b = self.size(a.tensor, a.axis), self.size(b.tensor, b.axis)
        smallest = 1 if piece else 2
        if size_a is None or size_b is None or min(size_a, size_b) < smallest:
            return
        if max(size_a, size_b) > MAX_CHANNELS:  # a corrupt size: never allocate index maps
            for space, size in ((a, size_a), (b, size_b)):
                self.block(space, f"{space} declares {size} indices, too many to be channels")
            return
        if pairs is None:
            if size_a != size_b:
                return
            pairs = (np.arange(size_a), np.arange(size_b))
        self._sink.add_link(self.position, a, size_a, b, size_b, pairs)

    def role(self, space: Space, role: Role) -> None:
        """Only float constants and quantized weights are weights: other integer constants are
        sizes and indices. A weight read through a Transpose, a Gather or a DequantizeLinear
        (dynamo's tied LM head, MatMul(h, Transpose(table)); TorchScript's experts,
        MatMul(Gather(stacked weights, expert ids), x); QDQ's int8 weights) takes the role on
        its own axis, so the oracle masks what the reader reads."""
        space = _weight_space(self.index, space)
        if is_weight_constant(self.index, space.tensor):
            self._sink.add_role(space, role)

    def fix(self, fix: Fix) -> None:
        self._sink.add_fix(fix)

    def tolerate(self, space: Space) -> None:
        """This node's result does not depend on the size of `space` (an axis a Shape does not
        read): pruning it needs nothing here."""
        self._sink.add_tolerated(self.position, space)

    def mark_heads(self, space: Space) -> None:
        """`space` indexes attention heads (the outer part of a [H*D] -> [H, D] split)."""
        self._sink.add_head_space(space)

    def mark_inexact(self, space: Space, reason: str) -> None:
        """Removing an index of `space` changes what this node computes from the others (a
        normalization's statistics): the group may still be pruned, but not exactly."""
        self._sink.add_inexact(space, f"{self.label}: {reason}")

    def block(self, space: Space, reason: str) -> None:
        self._sink.add_block(self.position, space, f"{self.label}: {reason}")

    def holds_channel(self, space: Space) -> bool:
        """Whether the rules that ran before this one (every producer upstream) joined `space`
        to a weight slice: a channel, not a spatial or sequence axis."""
        return self._sink.holds_channel(space)

    def space(self, name: str, axis: int) -> Space:
        """`Space` with a non-negative axis."""
        rank = self.rank(name)
        return Space(name, axis % rank if rank and axis < 0 else axis)


Rule = Callable[[RuleContext], None]


def is_weight_constant(index: GraphIndex, name: str) -> bool:
    """A float constant, or an integer one that a quantized op reads as data (its values are
    weights stored as integers, with a scale and a zero point)."""
    if name not in index.constants:
        return False
    return index.constants.is_float(name) or quantized_data(index, name) is not None


# Quantized ops: which inputs are integer data, and (data input -> zero point input, the axis a
# vector zero point runs along: "per-row", "per-column" of a matrix, or the conv output axis 0).
QUANTIZED_DATA: dict[str, dict[int, tuple[int | None, str]]] = {
    "DequantizeLinear": {0: (2, "attribute")},
    "MatMulInteger": {0: (2, "per-row"), 1: (3, "per-column")},
    "ConvInteger": {0: (2, "none"), 1: (3, "axis 0")},
    "QLinearConv": {0: (2, "none"), 3: (5, "axis 0"), 8: (None, "none")},
    "QLinearMatMul": {0: (2, "per-row"), 3: (5, "per-column")},
    "com.microsoft::QGemm": {0: (2, "none"), 3: (5, "gemm B"), 6: (None, "none")},
    "com.microsoft::QLinearAdd": {0: (2, "none"), 3: (5, "none")},
    "com.microsoft::QLinearMul": {0: (2, "none"), 3: (5, "none")},
}
# The scale input next to a data input (its zero point's neighbour), where the op has one;
# MatMulInteger and ConvInteger apply theirs afterwards, outside the op.
QUANTIZED_SCALE: dict[str, dict[int, int]] = {
    "DequantizeLinear": {0: 1},
    "QLinearConv": {0: 1, 3: 4},
    "QLinearMatMul": {0: 1, 3: 4},
    "com.microsoft::QGemm": {0: 1, 3: 4},
    "com.microsoft::QLinearAdd": {0: 1, 3: 4},
    "com.microsoft::QLinearMul": {0: 1, 3: 4},
}


def op_key(node: onnx.NodeProto) -> str:
    """`op_type` for the default domain, `domain::op_type` for any other."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


@dataclass(frozen=True)
class QuantizedData:
    """How an integer constant is read: the op and the input that gives its zero point."""

    node: onnx.NodeProto
    zero_point: str  # "" when the op has none (0) or the input is absent
    axis: int | None  # the data axis a vector zero point runs along; None for a scalar one


def quantized_data(index: GraphIndex, name: str) -> QuantizedData | None:
    """How the integer constant `name` is read as quantized data: by exactly the quantized ops
    of `QUANTIZED_DATA`, all with one constant zero point (so a masked slice can be set to the
    value that reads as zero). None when any reader is something else."""
    readers = index.consumers.get(name, [])
    found = None
    for position in readers:
        node = index.node(position)
        slots = QUANTIZED_DATA.get(op_key(node))
        inputs = [i for i, n in enumerate(node.input) if n == name]
        if slots is None or len(inputs) != 1 or inputs[0] not in slots:
            return None
        zero_point_input, along = slots[inputs[0]]
        given = zero_point_input is not None and zero_point_input < len(node.input)
        zero_point = node.input[zero_point_input] if given else ""
        if zero_point and zero_point not in index.constants:
            return None
        rank = len(index.constants.shape(name))
        axis = _zero_point_axis(node, along, rank) if zero_point else None
        if zero_point and index.constants.size(zero_point) <= 1:
            axis = None
        here = QuantizedData(node, zero_point, axis)
        if found is not None and (found.zero_point, found.axis) != (here.zero_point, here.axis):
            return None  # two readers that disagree on what zero is
        found = here
    return found


def _zero_point_axis(node: onnx.NodeProto, along: str, rank: int) -> int | None:
    if along == "attribute":
        return attribute(node, "axis", 1) % max(rank, 1)
    if along == "gemm B":  # B is [K, N], or [N, K] with transB: the zero point runs along N
        return 0 if attribute(node, "transB", 0) else 1
    return {"per-row": rank - 2, "per-column": rank - 1, "axis 0": 0}.get(along)


def zero_value(index: GraphIndex, name: str, shape: tuple[int, ...]) -> np.ndarray | int:
    """What a masked slice of constant `name` is set to so that it reads as zero: 0 for a float
    weight, the zero point for a quantized one (dequantized, (q - zero_point) * scale = 0)."""
    data = quantized_data(index, name) if not index.constants.is_float(name) else None
    if data is None or not data.zero_point:
        return 0
    zero_point = np.asarray(index.constants[data.zero_point])
    if data.axis is None:
        return zero_point.reshape(-1)[0]
    view = [1] * len(shape)
    view[data.axis] = shape[data.axis]
    return np.broadcast_to(zero_point.reshape(view), shape)


def dequantized(index: GraphIndex, name: str) -> np.ndarray:
    """The real values of constant `name`: a float weight as it is; a quantized one as
    (q - zero_point) * scale in float32 (times 1 where the op applies its scale afterwards), so
    that magnitudes never wrap around in int8 arithmetic."""
    value = index.constants[name]
    data = None if index.constants.is_float(name) else quantized_data(index, name)
    if data is None:
        return value
    real = value.astype(np.float32) - np.asarray(zero_value(index, name, value.shape), np.float32)
    slot = next(i for i, n in enumerate(data.node.input) if n == name)
    scale_input = QUANTIZED_SCALE.get(op_key(data.node), {}).get(slot)
    scale_name = data.node.input[scale_input] if scale_input is not None else ""
    if scale_name in index.constants:
        scale = np.asarray(index.constants[scale_name], np.float32)
        axis = _zero_point_axis(data.node, QUANTIZED_DATA[op_key(data.node)][slot][1], value.ndim)
        if scale.size == 1:
            scale = scale.reshape(-1)[0]
        elif axis is not None and value.shape[axis] == scale.size:
            view = [1] * value.ndim
            view[axis] = scale.size
            scale = scale.reshape(view)
        else:
            return real  # a scale this reading does not know how to lay out: unscaled
        real = real * scale
    return real


class WeightValues(Mapping[str, np.ndarray]):
    """The constants of `index` with quantized weights dequantized (see `dequantized`): what
    importance scores read, so an int8 weight is scored by its real magnitudes."""

    def __init__(self, index: GraphIndex):
        self._index = index

    def __getitem__(self, name: str) -> np.ndarray:
        return dequantized(self._index, name)

    def __contains__(self, name: object) -> bool:
        return name in self._index.constants

    def __iter__(self):
        return iter(self._index.constants)

    def __len__(self) -> int:
        return len(self._index.constants)


def _weight_space(index: GraphIndex, space: Space) -> Space:
    """The constant's axis that `space` is, through Transposes and Gathers of a constant (the
    Gather's data axes other than the gathered one) and DequantizeLinear (same axes); `space`
    itself otherwise."""
    for _ in range(4):  # a few steps: exporters write at most Transpose(Gather(W))
        if index.is_constant(space.tensor):
            return space
        position = index.producer.get(space.tensor)
        node = index.node(position) if position is not None else None
        if node is None or node.domain not in ("", "ai.onnx"):
            return space
        source = node.input[0] if node.input else ""
        rank = index.rank(source)
        index_rank = index.rank(node.input[1]) if node.op_type == "Gather" else None
        if node.op_type == "DequantizeLinear":
            space = Space(source, space.axis)
        elif node.op_type == "Transpose" and rank is not None:
            perm = attribute(node, "perm") or list(reversed(range(rank)))
            space = Space(source, perm[space.axis])
        elif node.op_type == "Gather" and rank is not None and index_rank is not None:
            axis = attribute(node, "axis", 0) % rank
            if axis <= space.axis < axis + index_rank:
                return space  # an index axis: not the constant's
            space = Space(source, space.axis if space.axis < axis else space.axis - index_rank + 1)
        else:
            return space
    return space


# ---------------------------------------------------------------------------------------------
# Shared shapes of rules
# ---------------------------------------------------------------------------------------------


def identity_all_axes(ctx: RuleContext, source: str, targets: Iterable[str]) -> None:
    rank = ctx.rank(source)
    for target in targets:
        if target and rank is not None and ctx.rank(target) == rank:
            for axis in range(rank):
                ctx.link(Space(source, axis), Space(target, axis))


def unary(ctx: RuleContext) -> None:
    """Elementwise on input 0 (extra inputs are scalars such as Clip bounds)."""
    identity_all_axes(ctx, ctx.input(0), ctx.node.output)


def broadcast(
    ctx: RuleContext,
    inputs: Iterable[str] | None = None,
    output: str | None = None,
    role: Role = Role.OUT,
) -> None:
    """Numpy broadcasting: axes align from the right; an input axis of the output's size is the
    same channel as the output axis; a broadcast (size 1) axis is not a channel."""
    output = output or ctx.output(0)
    out_rank = ctx.rank(output)
    if out_rank is None:
        return
    for name in inputs if inputs is not None else ctx.node.input:
        rank = ctx.rank(name)
        if not name or rank is None:
            continue
        for axis in range(rank):
            out_axis = axis + out_rank - rank
            if ctx.size(name, axis) == ctx.size(output, out_axis):
                ctx.link(Space(name, axis), Space(output, out_axis))
                ctx.role(Space(name, axis), role)


def block_map(size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Index i on one side is indices [i*width, (i+1)*width) on the other."""
    outer = np.repeat(np.arange(size), width)
    return outer, np.arange(size * width)


# ---------------------------------------------------------------------------------------------
# Weight layers
# ---------------------------------------------------------------------------------------------


def conv(ctx: RuleContext) -> None:
    """Conv: Y[n, o] = sum_c W[o, c] * X[n, g(o) * C/g + c] (+ B[o]).

    group == 1: X's channel axis is W's axis 1 (read), W's axis 0 is Y's channel (produced).
    Depthwise (W[:, 0:1], group == C_in): input channel i feeds outputs [i*m, (i+1)*m), so they
    are one channel and `group` follows the input width. Grouped (C_in/group > 1, ResNeXt):
    every group must keep the same local indices, so local index l couples the l-th channel of
    all groups, on both sides, and `group` stays.
    """
    _conv(ctx, ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0))


def _conv(ctx: RuleContext, x: str, w: str, b: str, y: str) -> None:
    w_shape, groups = ctx.shape(w), ctx.attr("group", 1)
    if w_shape is None:
        return
    if len(w_shape) < 3:  # not a valid Conv weight ([C_out, C_in/group, k...])
        for space in (Space(x, 1), Space(y, 1), Space(w, 0)):
            ctx.block(space, f"Conv weight of rank {len(w_shape)} (a Conv needs rank >= 3)")
        return
    out_channels, in_per_group = w_shape[0], w_shape[1]
    ctx.link(Space(x, 0), Space(y, 0))
    ctx.link(Space(w, 0), Space(y, 1))
    ctx.role(Space(w, 0), Role.OUT)
    if b:
        ctx.link(Space(b, 0), Space(y, 1))
        ctx.role(Space(b, 0), Role.OUT)
    if groups == 1:
        ctx.link(Space(x, 1), Space(w, 1))
        _reads(ctx, Space(w, 1))
    elif ctx.size(x, 1) != groups * in_per_group:
        # the outputs of a grouped conv can only shrink with its inputs: unknown input width
        for space in (Space(w, 0), Space(y, 1)):
            ctx.block(space, "grouped Conv whose input channel count is unknown")
    elif in_per_group == 1:
        ctx.link(Space(x, 1), Space(y, 1), block_map(groups, out_channels // groups))
        ctx.fix(AttrFix(ctx.position, "group", Space(x, 1)))
    else:
        x_indices = np.arange(groups * in_per_group)
        ctx.link(Space(x, 1), Space(w, 1), (x_indices, x_indices % in_per_group))
        _reads(ctx, Space(w, 1))
        out_per_group = out_channels // groups
        o = np.arange(out_channels)
        ctx.link(Space(w, 0), Space(w, 0), (o, o % out_per_group))


def conv_transpose(ctx: RuleContext) -> None:
    """ConvTranspose: W is [C_in, C_out/group, k...]; axis 0 reads X's channels, axis 1 makes
    Y's."""
    x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    ctx.link(Space(x, 0), Space(y, 0))
    if ctx.attr("group", 1) != 1:
        for space in (Space(x, 1), Space(y, 1)):
            ctx.block(space, "grouped ConvTranspose has no rule")
        return
    ctx.link(Space(x, 1), Space(w, 0))
    _reads(ctx, Space(w, 0))
    ctx.link(Space(w, 1), Space(y, 1))
    ctx.role(Space(w, 1), Role.OUT)
    if b:
        ctx.link(Space(b, 0), Space(y, 1))
        ctx.role(Space(b, 0), Role.OUT)


def gemm(ctx: RuleContext) -> None:
    """Gemm: Y = alpha * op(A) @ op(B) + beta * C; the contraction axis K reads, B's N axis
    makes Y's."""
    a, b, c, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a_m, a_k = (1, 0) if trans_a else (0, 1)
    b_k, b_n = (1, 0) if trans_b else (0, 1)
    ctx.link(Space(a, a_k), Space(b, b_k))
    _contraction_reader(ctx, Space(a, a_k), Space(b, b_k))
    ctx.link(Space(b, b_n), Space(y, 1))
    ctx.role(Space(b, b_n), Role.OUT)
    ctx.link(Space(a, a_m), Space(y, 0))
    ctx.role(Space(a, a_m), Role.OUT)
    if c:
        broadcast(ctx, [c], y)


def _contraction_reader(ctx: RuleContext, a_k: Space, b_k: Space) -> None:
    """The weight of a product reads its contraction axis: B's when B is a weight (directly,
    or through a Transpose or Gather of a constant), else A's (MatMul(Gather(experts), x)).
    An activation gathered from a table (an embedding lookup times a weight) reads nothing."""
    b_weight = _is_weight(ctx, b_k)
    _reads(ctx, b_k if b_weight or not _is_weight(ctx, a_k) else a_k)


COMPUTED_WEIGHT = (
    "its weight is computed at run time from constants (a Cast, Mul or other op of a stored "
    "weight): the oracle cannot mask what it reads"
)


def _reads(ctx: RuleContext, space: Space) -> None:
    """`space` reads the channel: role `in` on its weight. A weight that the graph computes
    from constants (int8 -> Cast -> Mul by scale; weight normalization) cannot be masked by
    zeroing a stored slice, so the channel is blocked with the reason instead."""
    if not _is_weight(ctx, space) and _computed_from_constants(ctx.index, space.tensor):
        ctx.block(space, COMPUTED_WEIGHT)
        return
    ctx.role(space, Role.IN)


def _computed_from_constants(index: GraphIndex, name: str, limit: int = 16) -> bool:
    """Whether `name` is produced by nodes whose inputs are, transitively, constants only
    (at most `limit` nodes looked at: a weight transform is short)."""
    pending, seen = [name], set()
    while pending:
        tensor = pending.pop()
        if index.is_constant(tensor) or tensor in seen:
            continue
        position = index.producer.get(tensor)
        if position is None or len(seen) >= limit:
            return False  # a graph input, or too far to be a weight transform
        seen.add(tensor)
        pending.extend(n for n in all_inputs(index.node(position)) if n)
    return bool(seen)


def _is_weight(ctx: RuleContext, space: Space) -> bool:
    return is_weight_constant(ctx.index, _weight_space(ctx.index, space).tensor)


def matmul(ctx: RuleContext) -> None:
    """MatMul (numpy semantics): A[..., M, K] @ B[..., K, N]; batch axes broadcast."""
    _matmul(ctx, ctx.input(0), ctx.input(1), ctx.output(0))


def _matmul(ctx: RuleContext, a: str, b: str, y: str) -> None:
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if ra is None or rb is None or ry is None:
        return
    ctx.link(Space(a, ra - 1), Space(b, max(rb - 2, 0)))
    _contraction_reader(ctx, Space(a, ra - 1), Space(b, max(rb - 2, 0)))
    if rb >= 2:
        ctx.link(Space(b, rb - 1), Space(y, ry - 1))
        ctx.role(Space(b, rb - 1), Role.OUT)
    if ra >= 2:
        ctx.link(Space(a, ra - 2), Space(y, ry - 1 - (rb >= 2)))
        ctx.role(Space(a, ra - 2), Role.OUT)
    for name, rank in ((a, ra), (b, rb)):
        for axis in range(rank - 2):
            out_axis = axis + (ry - 2) - (rank - 2)
            if ctx.size(name, axis) == ctx.size(y, out_axis):
                ctx.link(Space(name, axis), Space(y, out_axis))


# ---------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------


def batch_norm(ctx: RuleContext) -> None:
    """BatchNormalization: per channel (axis 1) scale, bias, running mean and variance."""
    x, y = ctx.input(0), ctx.output(0)
    if len([o for o in ctx.node.output if o]) > 1:
        ctx.block(Space(x, 1), "training-mode BatchNormalization has no rule")
        return
    identity_all_axes(ctx, x, [y])
    for i, role in ((1, Role.OUT), (2, Role.OUT), (3, Role.STAT), (4, Role.STAT)):
        ctx.link(Space(ctx.input(i), 0), Space(y, 1))
        ctx.role(Space(ctx.input(i), 0), role)


def instance_norm(ctx: RuleContext) -> None:
    """InstanceNormalization: statistics per (sample, channel), so channels are independent."""
    x, y = ctx.input(0), ctx.output(0)
    identity_all_axes(ctx, x, [y])
    for i in (1, 2):
        ctx.link(Space(ctx.input(i), 0), Space(y, 1))
        ctx.role(Space(ctx.input(i), 0), Role.OUT)


def group_norm(ctx: RuleContext) -> None:
    """GroupNormalization (opset 21, per-channel scale and bias): statistics per group of C/G
    channels, so only whole groups can go; `num_groups` follows. The deprecated opset-18 form
    (per-group scale) is not linked, so closure blocks it."""
    x, y = ctx.input(0), ctx.output(0)
    channels, groups = ctx.size(x, 1), ctx.attr("num_groups")
    if channels is None or not groups:
        return
    per_group = channels // groups
    identity_all_axes(ctx, x, [y])
    c = np.arange(channels)
    ctx.link(Space(y, 1), Space(y, 1), (c, c // per_group * per_group))
    for i in (1, 2):
        ctx.link(Space(ctx.input(i), 0), Space(y, 1))
        ctx.role(Space(ctx.input(i), 0), Role.OUT)
    ctx.fix(AttrFix(ctx.position, "num_groups", Space(y, 1), per=per_group))


def layer_norm(ctx: RuleContext) -> None:
    """LayerNormalization / SimplifiedLayerNormalization / RMSNormalization normalize over the
    axes >= axis; leading axes pass through. Normalizing over the last axis alone (every
    transformer), that axis is the residual stream's channel: input and output index i are the
    same channel, and the scale (and bias) entry i follows it. Removing a channel changes the
    statistics of every other, so the group is marked inexact. Over several axes, blocked."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    first = ctx.attr("axis", -1) % rank
    for out in ctx.node.output:
        for axis in range(first):
            ctx.link(Space(x, axis), Space(out, axis))
    if first < rank - 1:
        for axis in range(first, rank):
            ctx.block(Space(x, axis), f"{ctx.node.op_type} normalizes over this axis")
        return
    _normalized_channel(ctx, x, [y], [ctx.input(1), ctx.input(2)])


NORMALIZATION_CHANGES = "normalizes over this axis (its statistics change when it shrinks)"


def _normalized_channel(ctx: RuleContext, x: str, outputs: list[str], params: list[str]) -> None:
    """The last axis of `x` is normalized: it is the last axis of each output, the last axis of
    each parameter (scale, bias; broadcast from the right) follows it; the group is inexact."""
    rank = ctx.rank(x)
    last = Space(x, rank - 1)
    for out in outputs:
        if out and ctx.rank(out) == rank:
            ctx.link(last, Space(out, rank - 1))
    for param in params:
        param_rank = ctx.rank(param)
        if param and param_rank:
            ctx.link(Space(param, param_rank - 1), last)
            ctx.role(Space(param, param_rank - 1), Role.OUT)
    ctx.mark_inexact(last, f"{ctx.node.op_type} {NORMALIZATION_CHANGES}")


def softmax(ctx: RuleContext) -> None:
    """Softmax-like ops normalize over `axis` (and, before opset 13, every axis after it)."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    default = -1 if ctx.index.opset >= 13 else 1
    axis = ctx.attr("axis", default) % rank
    reduced = {axis} if ctx.index.opset >= 13 else set(range(axis, rank))
    for a in range(rank):
        if a in reduced:
            ctx.block(Space(x, a), f"{ctx.node.op_type} normalizes over this axis")
        else:
            ctx.link(Space(x, a), Space(y, a))


# ---------------------------------------------------------------------------------------------
# Data movement
# ---------------------------------------------------------------------------------------------


def concat(ctx: RuleContext) -> None:
    """Concat: input k's index i is output index offset_k + i on the concat axis (when every
    input's width there is known); the other axes pass through from every input."""
    y = ctx.output(0)
    rank = ctx.rank(y)
    if rank is None:
        return
    axis = ctx.attr("axis") % rank
    for name in ctx.node.input:
        for a in range(rank):
            if a != axis:
                ctx.link(Space(name, a), Space(y, a))
    widths = [ctx.size(name, axis) for name in ctx.node.input]
    if any(width is None for width in widths):
        return
    offset = 0
    for name, width in zip(ctx.node.input, widths, strict=True):
        indices = np.arange(width)
        ctx.link(Space(name, axis), Space(y, axis), (indices, indices + offset), piece=True)
        ctx.role(Space(name, axis), Role.OUT)
        offset += width


def gather(ctx: RuleContext) -> None:
    """Gather along `axis`: out[i_0..i_{a-1}, j.., i_{a+1}..] = data[i_0.., indices[j..], ..]. The
    data's other axes pass through (after the index axes), the indices' axes become output
    axes; the gathered axis itself is not linked (a channel there is a barrier). An embedding
    table is a constant [V, E] gathered on axis 0: its axis 1 makes the output's last axis."""
    data, indices, y = ctx.input(0), ctx.input(1), ctx.output(0)
    rank, index_rank = ctx.rank(data), ctx.rank(indices)
    if rank is None or index_rank is None:
        return
    axis = ctx.attr("axis", 0) % rank
    for a in range(rank):
        if a != axis:
            out_axis = a if a < axis else a + index_rank - 1
            ctx.link(Space(data, a), Space(y, out_axis))
            ctx.role(Space(data, a), Role.OUT)
    for k in range(index_rank):
        ctx.link(Space(indices, k), Space(y, axis + k))


def split(ctx: RuleContext) -> None:
    """Split: output k's index i is input index offset_k + i; the sizes are rewritten."""
    x = ctx.input(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    axis = ctx.attr("axis", 0) % rank
    outputs = [o for o in ctx.node.output]
    widths = [ctx.size(o, axis) for o in outputs]
    if any(w is None for w in widths):
        return
    offset = 0
    for out, width in zip(outputs, widths, strict=True):
        indices = np.arange(width)
        ctx.link(Space(x, axis), Space(out, axis), (indices + offset, indices), piece=True)
        for a in range(rank):
            if a != axis:
                ctx.link(Space(x, a), Space(out, a))
        offset += width
    ctx.fix(SplitFix(ctx.position, tuple(Space(o, axis) for o in outputs)))


def slice_(ctx: RuleContext) -> None:
    """Slice with constant bounds and step 1: output index i is input index start + i."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    starts, ends = ctx.const(ctx.input(1)), ctx.const(ctx.input(2))
    if rank is None or starts is None or ends is None:
        return
    axes = ctx.const(ctx.input(3)) if ctx.input(3) else np.arange(len(starts))
    steps = ctx.const(ctx.input(4)) if ctx.input(4) else np.ones(len(starts), dtype=np.int64)
    if axes is None or steps is None:
        return
    sliced = {int(a) % rank: k for k, a in enumerate(axes)}
    for a in range(rank):
        if a not in sliced:
            ctx.link(Space(x, a), Space(y, a))
            continue
        k, width, out_width = sliced[a], ctx.size(x, a), ctx.size(y, a)
        if steps[k] != 1 or width is None or out_width is None:
            ctx.block(Space(x, a), "Slice with a step other than 1 on this axis")
            continue
        start = int(np.clip(starts[k] + width if starts[k] < 0 else starts[k], 0, width))
        indices = np.arange(out_width)
        ctx.link(Space(x, a), Space(y, a), (indices + start, indices))
        ctx.fix(SliceFix(ctx.position, k, Space(x, a), start, Space(y, a)))


def pad(ctx: RuleContext) -> None:
    """Pad: axes with no padding pass through; padded axes are not channels."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    pads = ctx.ints_input_or_attr(1, "pads")
    if rank is None or pads is None:
        return
    axes = ctx.const(ctx.input(3)) if ctx.input(3) else np.arange(rank)
    if axes is None:
        return
    padded = {axes[k] % rank for k in range(len(axes)) if pads[k] or pads[k + len(axes)]}
    for a in range(rank):
        if a in padded:
            ctx.block(Space(x, a), "Pad pads this axis")
        else:
            ctx.link(Space(x, a), Space(y, a))


def pool(ctx: RuleContext) -> None:
    """Pooling: batch and channel pass through (also to MaxPool's Indices output)."""
    x = ctx.input(0)
    for out in ctx.node.output:
        if out:
            ctx.link(Space(x, 0), Space(out, 0))
            ctx.link(Space(x, 1), Space(out, 1))


def resize(ctx: RuleContext) -> None:
    """Resize/Upsample: axes whose size does not change pass through; a `sizes` entry for such
    an axis is rewritten."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    sizes_input = ctx.input(3) if ctx.node.op_type == "Resize" else ""
    axes = ctx.attr("axes") or list(range(rank))
    for a in range(rank):
        if ctx.size(x, a) is None or ctx.size(x, a) != ctx.size(y, a):
            continue
        if sizes_input and a in [ax % rank for ax in axes]:
            if ctx.const(sizes_input) is None:
                ctx.block(Space(x, a), "Resize sizes come from a non-constant subgraph")
                continue
            entry = [ax % rank for ax in axes].index(a)
            ctx.fix(ShapeEntryFix(ctx.position, 3, entry, Space(y, a)))
        ctx.link(Space(x, a), Space(y, a))


def transpose(ctx: RuleContext) -> None:
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    perm = ctx.attr("perm") or list(reversed(range(rank)))
    for out_axis, in_axis in enumerate(perm):
        ctx.link(Space(x, in_axis), Space(y, out_axis))


def squeeze_unsqueeze(ctx: RuleContext) -> None:
    """Squeeze/Unsqueeze: the remaining axes keep their order."""
    x, y = ctx.input(0), ctx.output(0)
    rx, ry = ctx.rank(x), ctx.rank(y)
    if rx is None or ry is None:
        return
    axes = ctx.ints_input_or_attr(1, "axes")
    squeeze = ctx.node.op_type == "Squeeze"
    if axes is None:
        if not squeeze:
            return
        shape = ctx.index.shapes.get(x) or ()
        axes = [a for a, d in enumerate(shape) if d == 1]
    removed = {a % (rx if squeeze else ry) for a in axes}
    kept_in = [a for a in range(rx) if not (squeeze and a in removed)]
    kept_out = [a for a in range(ry) if squeeze or a not in removed]
    for a_in, a_out in zip(kept_in, kept_out, strict=False):
        ctx.link(Space(x, a_in), Space(y, a_out))


def reduce(ctx: RuleContext) -> None:
    """Reduce over some axes: the other axes pass through (shifted when keepdims=0)."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    axes = ctx.ints_input_or_attr(1, "axes")
    if axes is None:
        if ctx.attr("noop_with_empty_axes", 0):
            identity_all_axes(ctx, x, [y])
        return
    reduced = {a % rank for a in axes}
    keepdims = ctx.attr("keepdims", 1)
    statistic = _normalization_statistic(ctx, x, reduced)
    out_axis = 0
    for a in range(rank):
        if a in reduced and statistic:
            ctx.tolerate(Space(x, a))
            ctx.mark_inexact(Space(x, a), f"the mean of a spelled-out norm {NORMALIZATION_CHANGES}")
        elif a in reduced:
            ctx.block(Space(x, a), f"{ctx.node.op_type} reduces over this axis")
        else:
            ctx.link(Space(x, a), Space(y, out_axis))
        out_axis += 1 if keepdims or a not in reduced else 0


# What a norm's statistic passes through before it meets its input again: Add eps, Sqrt, 1 / .,
# and dtype casts (each with constant scalars as its other inputs).
_STATISTIC_STEPS = {"Add", "Sqrt", "Reciprocal", "Div", "Cast", "Mul", "Pow"}
_STATISTIC_DEPTH = 6


def _normalization_statistic(ctx: RuleContext, x: str, reduced: set[int]) -> bool:
    """Whether this node is the ReduceMean of a LayerNorm or RMSNorm spelled out in primitives,
    over the last axis only, keeping it:

        RMSNorm:   x * 1 / Sqrt(ReduceMean(Pow(x, 2)) + eps)   (or Reciprocal, or x / Sqrt(.))
        LayerNorm: d = x - ReduceMean(x);  d / Sqrt(ReduceMean(Pow(d, 2)) + eps)

    i.e. the mean of `base` or of `base` squared which, through `_STATISTIC_STEPS` on constant
    scalars, meets `base` again in a Sub, Mul or Div. Any other reduction over a channel axis
    (channel attention, pooling over features) stays a barrier."""
    rank = ctx.rank(x)
    if ctx.node.op_type != "ReduceMean" or reduced != {rank - 1} or not ctx.attr("keepdims", 1):
        return False
    base = _squared(ctx, x) or x
    frontier = [ctx.output(0)]
    for _ in range(_STATISTIC_DEPTH):
        reached = []
        for name in frontier:
            for position in ctx.index.consumers.get(name, []):
                node = ctx.index.node(position)
                if node.domain not in ("", "ai.onnx"):
                    continue
                others = [i for i in node.input if i != name]
                if node.op_type in ("Sub", "Mul", "Div") and others == [base]:
                    return True
                if node.op_type in _STATISTIC_STEPS and all(_scalar(ctx, o) for o in others):
                    reached.append(node.output[0])
        frontier = reached
    return False


def _squared(ctx: RuleContext, name: str) -> str | None:
    """`b` when `name` is Pow(b, 2) or Mul(b, b)."""
    position = ctx.index.producer.get(name)
    node = ctx.index.node(position) if position is not None else None
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Pow" and _scalar(ctx, node.input[1], 2.0):
        return node.input[0]
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    return None


def _scalar(ctx: RuleContext, name: str, value: float | None = None) -> bool:
    """`name` is a one-element constant (equal to `value` when given)."""
    constant = ctx.const(name) if name else None
    if constant is None or constant.size != 1:
        return False
    return value is None or float(constant.reshape(-1)[0]) == value


def expand(ctx: RuleContext) -> None:
    """Expand: axes already at the target size pass through; their target entries are rewritten
    (an entry of 1 or -1 keeps the input's size and needs no rewrite).

    An axis broadcast from size 1 holds identical copies of one slice: any of them can go, with
    nothing to remove upstream, and its target entry follows the output's new size. That is how
    the query heads of MQA (one key/value head, `repeat_kv` = Unsqueeze + Expand + Reshape) can
    be pruned one by one."""
    x, y = ctx.input(0), ctx.output(0)
    rx, ry = ctx.rank(x), ctx.rank(y)
    target_length = ctx.size(ctx.input(1), 0)
    if rx is None or ry is None or target_length is None:
        return
    for out_axis in range(ry):
        a = out_axis - (ry - rx)  # the input axis, if any
        k = out_axis - (ry - target_length)  # the target entry, if any
        in_size = ctx.size(x, a) if a >= 0 else 1
        out_size = ctx.size(y, out_axis)
        if in_size is None or out_size is None or (in_size != out_size and in_size != 1):
            continue
        entry = shape_entry(ctx, 1, k) if k >= 0 else None
        if in_size == 1:
            if out_size > 1 and k >= 0:
                _broadcast_copies(ctx, Space(y, out_axis), entry)
            continue
        if k >= 0 and entry is None:
            ctx.block(Space(x, a), "Expand target entry comes from a non-constant subgraph")
            continue
        if entry is not None and entry.value not in (1, -1):
            ctx.fix(entry.fix(Space(y, out_axis)))
        ctx.link(Space(x, a), Space(y, out_axis))


def _broadcast_copies(ctx: RuleContext, space: Space, entry: ShapeEntry | None) -> None:
    """`space` is an axis an Expand broadcasts from size 1: copies of one slice."""
    if entry is None or entry.value != ctx.size(space.tensor, space.axis):
        ctx.block(space, "Expand target entry of a broadcast axis is not a constant")
        return
    ctx.fix(entry.fix(space))
    ctx.tolerate(space)


def shape_reader(ctx: RuleContext) -> None:
    """Shape/Size read sizes: a pruned size would change the values they produce. Only the axes
    actually read are blocked: Shape's start/end, narrowed further when every reader is a
    Gather or Slice of constants (the batch and sequence sizes exporters fetch)."""
    x = ctx.input(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    if ctx.node.op_type == "Size":
        read = set(range(rank))
    else:
        start, end = ctx.attr("start", 0), ctx.attr("end", rank)
        read = set(range(rank)[start:end])
        picked = _picked(ctx, sorted(read))
        read = read if picked is None else picked
    for a in range(rank):
        if a in read:
            ctx.block(Space(x, a), f"{ctx.node.op_type} reads this tensor's size")
        else:
            ctx.tolerate(Space(x, a))


def _picked(ctx: RuleContext, axes: list[int]) -> set[int] | None:
    """The axes picked out of this Shape's output when every reader is a Gather of constant
    indices or a Slice of constant bounds (how exporters fetch batch and sequence); None when
    some reader uses the whole vector. A Shape nobody reads reads nothing."""
    if ctx.output(0) in ctx.index.graph_outputs:
        return None
    picked: set[int] = set()
    entries = np.arange(len(axes))
    for position in ctx.index.consumers.get(ctx.output(0), []):
        reader = ctx.index.node(position)
        chosen = _picked_entries(ctx, reader, entries)
        if chosen is None:
            return None
        picked.update(axes[int(i)] for i in chosen)
    return picked


def _picked_entries(ctx: RuleContext, reader: onnx.NodeProto, entries: np.ndarray):
    if reader.domain not in ("", "ai.onnx") or reader.input[0] != ctx.output(0):
        return None
    if reader.op_type == "Gather" and attribute(reader, "axis", 0) == 0:
        indices = ctx.const(reader.input[1])
        n = len(entries)
        if indices is None or not np.all((-n <= indices) & (indices < n)):
            return None
        return entries[np.asarray(indices, dtype=np.int64).reshape(-1)]
    if reader.op_type == "Slice":
        bounds = [ctx.const(name) if name else None for name in list(reader.input[1:5])]
        bounds += [None] * (4 - len(bounds))
        starts, ends, axes, steps = bounds
        if starts is None or ends is None or starts.size != 1 or ends.size != 1:
            return None
        if axes is not None and int(axes.reshape(-1)[0]) not in (0, -1):
            return None
        step = 1 if steps is None else int(steps.reshape(-1)[0])
        if step == 0:
            return None
        return entries[slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), step)]
    return None


# ---------------------------------------------------------------------------------------------
# Size vectors (Reshape/Expand targets): which constant holds entry k
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeEntry:
    """Entry `entry` of the constant at input `input_index` of node `node` holds `value`."""

    node: int
    input_index: int
    entry: int
    value: int

    def fix(self, space: Space) -> ShapeEntryFix:
        return ShapeEntryFix(self.node, self.input_index, self.entry, space)


def shape_entry(ctx: RuleContext, input_index: int, k: int) -> ShapeEntry | None:
    """Where entry k of the size vector at `input_index` of this node lives: in a constant given
    directly, or in a constant piece of the `Concat` that builds it at run time (exporters
    concatenate `Shape`-derived batch and sequence sizes with literal head counts), reached
    through ops that keep entry k where it is (see `_same_entries`)."""
    holder, index_in_holder = ctx.position, input_index
    name = ctx.input(input_index)
    while True:
        value = ctx.const(name)
        if value is not None:
            return ShapeEntry(holder, index_in_holder, k, int(value.reshape(-1)[k]))
        producer = ctx.index.producer.get(name)
        if producer is None:
            return None
        node = ctx.index.node(producer)
        if node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
            piece = _concat_piece(ctx, node, k)
            if piece is None:
                return None
            index_in_holder, k = piece
            holder, name = producer, node.input[index_in_holder]
            continue
        source = _same_entries(ctx, node, name)
        if source is None:
            return None
        holder, index_in_holder, name = producer, list(node.input).index(source), source


def _concat_piece(ctx: RuleContext, concat: onnx.NodeProto, k: int) -> tuple[int, int] | None:
    """(input index, offset inside it) of entry k of a Concat of 1-D vectors."""
    offset = 0
    for piece_index, piece in enumerate(concat.input):
        length = ctx.index.static_size(piece, 0) if ctx.index.rank(piece) == 1 else None
        if length is None:
            return None
        if offset <= k < offset + length:
            return piece_index, k - offset
        offset += length
    return None


def _same_entries(ctx: RuleContext, node: onnx.NodeProto, output: str) -> str | None:
    """The input whose entry k is this 1-D output's entry k, for ops that move no entry:
    Identity, Cast, and Reshape/Squeeze/Unsqueeze keeping the vector's length; and TorchScript's
    `Where(Equal(t, -1), ones, t)` (expand's -1 handling), whose entry is t's wherever t's is not
    -1: the entries edited here are sizes, never -1."""
    if node.domain not in ("", "ai.onnx") or ctx.index.rank(output) != 1:
        return None
    if node.op_type in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze"):
        source = node.input[0]
        same_length = ctx.index.static_size(source, 0) == ctx.index.static_size(output, 0)
        return source if ctx.index.rank(source) == 1 and same_length else None
    if node.op_type == "Where":
        condition = ctx.index.producer.get(node.input[0])
        test = ctx.index.node(condition) if condition is not None else None
        if test is not None and test.op_type == "Equal" and node.input[2] in test.input:
            return node.input[2]
    return None


# ---------------------------------------------------------------------------------------------
# Reshape and Flatten: axes are merged or split; the channel is the leading non-unit axis.
# ---------------------------------------------------------------------------------------------


def reshape_segments(src: tuple, dst: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes with equal products: [(src_axes, dst_axes), ...], or None.

    Dimensions may be symbolic (exported batch and sequence): a symbol pairs with the same
    symbol on the other side, one to one; static runs between symbols factorize as usual.
    Runs are paired from the left, then from the right; what neither reaches is one middle
    run, which holds every symbol that changes (GPT-2's Conv1D flattens [b, s, E] to
    [b*s, E], whose first dim inference names anew). Its products are equal because the
    element count is, so the runs on both sides of it stay paired; no static axis of the
    middle run is carried (link_reshape links nothing there).
    """
    if any(d is None for d in (*src, *dst)):
        return None
    head, i, j = _segments_from_left(src, dst)
    if (i, j) == (len(src), len(dst)):
        return head
    tail_reversed, ri, rj = _segments_from_left(src[i:][::-1], dst[j:][::-1])
    tail = [
        (sorted(len(src) - 1 - a for a in src_axes), sorted(len(dst) - 1 - b for b in dst_axes))
        for src_axes, dst_axes in reversed(tail_reversed)
    ]
    middle = list(range(i, len(src) - ri)), list(range(j, len(dst) - rj))
    if not middle[0] or not middle[1]:
        return None
    if not any(isinstance(d, str) for d in (*src[i : len(src) - ri], *dst[j : len(dst) - rj])):
        return None  # static runs that do not factorize: a real regrouping
    return [*head, middle, *tail]


def _segments_from_left(src: tuple, dst: tuple) -> tuple[list, int, int]:
    """The runs paired from the left, and where pairing stopped (src, dst positions)."""
    segments, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        if i < len(src) and j < len(dst) and isinstance(src[i], str) and src[i] == dst[j]:
            segments.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        start_i, start_j, p, q = i, j, 1, 1
        if i < len(src) and isinstance(src[i], int):
            p, i = src[i], i + 1
        if j < len(dst) and isinstance(dst[j], int):
            q, j = dst[j], j + 1
        while p != q:
            if p < q and i < len(src) and isinstance(src[i], int):
                p, i = p * src[i], i + 1
            elif q < p and j < len(dst) and isinstance(dst[j], int):
                q, j = q * dst[j], j + 1
            else:
                return segments, start_i, start_j
        if (start_i, start_j) == (i, j):
            return segments, start_i, start_j  # a symbol with no partner
        segments.append((list(range(start_i, i)), list(range(start_j, j))))
    return segments, i, j


def link_reshape(ctx: RuleContext, x: str, y: str, shuffle_check: bool = False) -> list[int]:
    """Link x's axes to y's through a reshape; return the output axes that carry channels.

    Merge [C, H, W] -> [C*H*W]: channel c is the block [c*HW, (c+1)*HW) (the leading non-unit
    axis; the others are merged behind it and blocked). Split [H*D] -> [H, D]: index i belongs
    to outer index i // D (heads), or, when `shuffle_check` finds the two parts swapped by the
    next Transpose (channel shuffle), to i % D.
    """
    src, dst = ctx.index.shapes.get(x), ctx.index.shapes.get(y)
    if src is None or dst is None:
        return []
    segments = reshape_segments(src, dst)
    if segments is None:
        return []
    carried = []
    for src_axes, dst_axes in segments:
        if any(isinstance(src[a], str) for a in src_axes) or any(
            isinstance(dst[a], str) for a in dst_axes
        ):
            continue  # symbols (a pair, or the middle run): no channel is carried
        big_src = [a for a in src_axes if isinstance(src[a], int) and src[a] > 1]
        big_dst = [a for a in dst_axes if isinstance(dst[a], int) and dst[a] > 1]
        if not big_src or not big_dst:
            continue
        lead = _merged_channel(ctx, x, big_src) if len(big_dst) == 1 else big_src[0]
        rest = [a for a in big_src if a != lead]
        if len(big_src) >= 1 and len(big_dst) == 1:
            ctx.link(Space(x, lead), Space(y, big_dst[0]), merge_map(src, big_src, lead))
            carried.append(big_dst[0])
            for a in rest:
                ctx.block(Space(x, a), "Reshape merges this axis with the channel axis")
        elif len(big_src) == 1 and len(big_dst) == 2 and shuffle_check and _swaps(ctx, big_dst):
            inner = dst[big_dst[1]]
            i = np.arange(src[lead])
            ctx.link(Space(x, lead), Space(y, big_dst[1]), (i, i % inner))
            carried.append(big_dst[1])
        elif len(big_src) == 1:
            inner = prod(dst[a] for a in big_dst[1:])
            i = np.arange(src[lead])
            ctx.link(Space(x, lead), Space(y, big_dst[0]), (i, i // inner))
            ctx.mark_heads(Space(y, big_dst[0]))
            carried.append(big_dst[0])
        else:
            for a in big_src:
                ctx.block(Space(x, a), "Reshape regroups this axis with others")
    return carried


def _merged_channel(ctx: RuleContext, x: str, axes: list[int]) -> int:
    """The axis a merge carries: the leading one ([C, H, W] -> [C*H*W]), unless it holds no
    channel and exactly one later axis does: a channels-last Flatten ([H, W, C] -> [H*W*C],
    Keras and tf2onnx exports) carries C, and the spatial axes are never channels."""
    if len(axes) < 2 or ctx.holds_channel(Space(x, axes[0])):
        return axes[0]
    holding = [a for a in axes[1:] if ctx.holds_channel(Space(x, a))]
    return holding[0] if len(holding) == 1 else axes[0]


def merge_map(shape: tuple, axes: list[int], carried: int) -> tuple[np.ndarray, np.ndarray]:
    """Index i of axis `carried` is every merged index whose digit on that axis is i (the
    merged axes in row-major order; axes outside `axes` have size 1)."""
    inner = prod(shape[a] for a in axes if a > carried)
    merged = np.arange(prod(shape[a] for a in axes))
    return (merged // inner) % shape[carried], merged


def _swaps(ctx: RuleContext, parts: list[int]) -> bool:
    """The output goes to one Transpose that exchanges exactly the two split parts (a channel
    shuffle), not some other pair of axes (attention's [B, S, H, D] -> [B, H, S, D])."""
    users = ctx.index.consumers.get(ctx.output(0), [])
    if len(users) != 1 or ctx.index.node(users[0]).op_type != "Transpose":
        return False
    perm = attribute(ctx.index.node(users[0]), "perm") or []
    moved = [a for a, p in enumerate(perm) if a != p]
    return moved == sorted(parts) and perm[parts[0]] == parts[1]


def reshape(ctx: RuleContext) -> None:
    """Reshape: see `link_reshape`; target entries of carried axes are rewritten (0 and -1 stay,
    since they follow the input)."""
    x, y = ctx.input(0), ctx.output(0)
    carried = link_reshape(ctx, x, y, shuffle_check=True)
    for axis in carried:
        entry = shape_entry(ctx, 1, axis)
        if entry is None:
            ctx.block(Space(y, axis), "Reshape target entry comes from a non-constant subgraph")
        elif entry.value > 0:
            ctx.fix(entry.fix(Space(y, axis)))
        elif entry.value == 0 and ctx.size(x, axis) != ctx.size(y, axis):
            ctx.block(Space(y, axis), "Reshape copies (0) a dimension that changes meaning")


def flatten(ctx: RuleContext) -> None:
    link_reshape(ctx, ctx.input(0), ctx.output(0))


# ---------------------------------------------------------------------------------------------
# com.microsoft contrib ops (what onnxruntime.transformers.optimizer fuses attention into)
# ---------------------------------------------------------------------------------------------


def _heads_together(ctx: RuleContext, space: Space, head_dim: int) -> None:
    """The head_dim channels of each head of a [.., H*D] axis go together (no head is split)."""
    width = ctx.size(space.tensor, space.axis)
    if width:
        c = np.arange(width)
        ctx.link(space, space, (c, c // head_dim * head_dim))
        ctx.mark_heads(space)


def ms_attention(ctx: RuleContext) -> None:
    """com.microsoft Attention: weights [in, 3*H*D] hold the q | k | v column blocks; head h owns
    columns h*D .. h*D+D-1 of each block, the same bias entries, and channels h*D .. of the
    [B, S, H*D] output. Removing a head removes all of them; `num_heads` follows."""
    x, w, b, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    heads, width = ctx.attr("num_heads"), ctx.size(y, 2)
    if ctx.input(4) or ctx.attr("qkv_hidden_sizes"):
        ctx.block(Space(y, 2), "Attention with a past cache or qkv_hidden_sizes has no rule")
        return
    if not heads or not width:
        return
    head_dim = width // heads
    ctx.link(Space(x, 0), Space(y, 0))
    ctx.link(Space(x, 1), Space(y, 1))
    ctx.link(Space(x, 2), Space(w, 0))
    ctx.role(Space(w, 0), Role.IN)
    columns = np.arange(3 * width)
    owner = (columns, (columns % width) // head_dim * head_dim)  # column -> its head's channel
    ctx.link(Space(w, 1), Space(y, 2), owner)
    ctx.role(Space(w, 1), Role.OUT)
    if b:
        ctx.link(Space(b, 0), Space(y, 2), owner)
        ctx.role(Space(b, 0), Role.OUT)
    _heads_together(ctx, Space(y, 2), head_dim)
    ctx.fix(AttrFix(ctx.position, "num_heads", Space(y, 2), per=head_dim))


def ms_multi_head_attention(ctx: RuleContext) -> None:
    """com.microsoft MultiHeadAttention on separate [B, S, H*D] query, key and value (projected
    outside): channel c of each is channel c of the output; heads go whole; `num_heads`
    follows. The optional fused bias is [q | k | v]."""
    q, k, v, bias = (ctx.input(i) for i in range(4))
    y = ctx.output(0)
    heads, width = ctx.attr("num_heads"), ctx.size(q, 2)
    ranks = {ctx.rank(t) for t in (q, k, v)}
    if not heads or not width or ranks != {3} or len([o for o in ctx.node.output if o]) > 1:
        ctx.block(Space(q, 2), "MultiHeadAttention other than 3-D q/k/v without cache")
        return
    if ctx.size(y, 2) != width:  # the output's width must follow the query's: it must be known
        ctx.block(Space(q, 2), "MultiHeadAttention output shape unknown")
        return
    for t in (q, k, v):
        ctx.link(Space(t, 2), Space(y, 2))
    ctx.link(Space(q, 0), Space(y, 0))
    ctx.link(Space(q, 1), Space(y, 1))
    if bias:
        c = np.arange(3 * width)
        ctx.link(Space(bias, 0), Space(y, 2), (c, c % width))
        ctx.role(Space(bias, 0), Role.OUT)
    _heads_together(ctx, Space(y, 2), width // heads)
    ctx.fix(AttrFix(ctx.position, "num_heads", Space(y, 2), per=width // heads))


def ms_group_query_attention(ctx: RuleContext) -> None:
    """com.microsoft GroupQueryAttention: query [B, S, H*D], key and value [B, S, KV*D]; query
    head h reads key/value head h // (H/KV), so a unit is one key/value head with its query
    heads. `num_heads` and `kv_num_heads` follow. Packed QKV (no key input) has no rule."""
    q, k, v, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    heads, kv_heads, width = ctx.attr("num_heads"), ctx.attr("kv_num_heads"), ctx.size(q, 2)
    if not (heads and kv_heads and width and k and v):
        ctx.block(Space(q, 2), "GroupQueryAttention with packed QKV has no rule")
        return
    if ctx.size(y, 2) != width:  # the output's width must follow the query's: it must be known
        ctx.block(Space(q, 2), "GroupQueryAttention output shape unknown")
        return
    head_dim, group = width // heads, heads // kv_heads
    ctx.link(Space(q, 2), Space(y, 2))
    ctx.link(Space(k, 2), Space(v, 2))
    c = np.arange(width)
    ctx.link(Space(q, 2), Space(k, 2), (c, c // head_dim // group * head_dim))
    _heads_together(ctx, Space(q, 2), head_dim)
    _heads_together(ctx, Space(k, 2), head_dim)
    ctx.link(Space(q, 0), Space(y, 0))
    ctx.link(Space(q, 1), Space(y, 1))
    for cache in (ctx.output(1), ctx.output(2)):
        if cache:  # present key/value [B, KV, S, D]: key/value head i is cache head i
            ctx.link(
                Space(k, 2),
                Space(cache, 1),
                (np.arange(kv_heads * head_dim), np.arange(kv_heads * head_dim) // head_dim),
            )
    ctx.fix(AttrFix(ctx.position, "num_heads", Space(q, 2), per=head_dim))
    ctx.fix(AttrFix(ctx.position, "kv_num_heads", Space(k, 2), per=head_dim))


def ms_rotary_embedding(ctx: RuleContext) -> None:
    """com.microsoft RotaryEmbedding rotates inside each head: heads pass through whole;
    `num_heads` (when set, for [B, S, H*D] input) follows."""
    x, y = ctx.input(0), ctx.output(0)
    rank, heads = ctx.rank(x), ctx.attr("num_heads", 0)
    if rank == 4:  # [B, H, S, D]: the head axis passes, D is rotated
        for a in range(3):
            ctx.link(Space(x, a), Space(y, a))
        return
    if rank != 3 or not heads or not ctx.size(x, 2):
        return
    for a in range(3):
        ctx.link(Space(x, a), Space(y, a))
    _heads_together(ctx, Space(y, 2), ctx.size(x, 2) // heads)
    ctx.fix(AttrFix(ctx.position, "num_heads", Space(y, 2), per=ctx.size(x, 2) // heads))


def ms_skip_norm(ctx: RuleContext) -> None:
    """Skip(Simplified)LayerNormalization: s = input + skip (+ bias), output = norm(s) * gamma
    (+ beta), output 3 = s. Leading axes pass through (skip may drop the batch axis, so axes
    align from the right); the last axis is normalized, as for LayerNormalization: input, skip,
    output and s share its channels, gamma, beta and bias follow them, the group is inexact."""
    x, skip = ctx.input(0), ctx.input(1)
    rank = ctx.rank(x)
    if rank is None:
        return
    for out in [skip, *ctx.node.output]:
        out_rank = ctx.rank(out)
        for axis in range(rank - 1):
            if out_rank is not None and axis + out_rank - rank >= 0:
                ctx.link(Space(x, axis), Space(out, axis + out_rank - rank))
    simplified = ctx.node.op_type == "SkipSimplifiedLayerNormalization"
    params = [ctx.input(i) for i in ((2, 3) if simplified else (2, 3, 4))]
    outputs = [ctx.output(0), ctx.output(3)]
    _normalized_channel(ctx, x, outputs, params)
    skip_rank = ctx.rank(skip)
    if skip_rank:
        ctx.link(Space(skip, skip_rank - 1), Space(x, rank - 1))


def ms_bias_activation(ctx: RuleContext) -> None:
    """FastGelu / BiasGelu / Gelu / QuickGelu: elementwise, with an optional bias on the last
    axis."""
    unary(ctx)
    x, bias, y = ctx.input(0), ctx.input(1), ctx.output(0)
    rank = ctx.rank(x)
    if bias and rank:
        ctx.link(Space(bias, 0), Space(y, rank - 1))
        ctx.role(Space(bias, 0), Role.OUT)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Einsum
# ---------------------------------------------------------------------------------------------

ELLIPSIS = "..."


def einsum_labels(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """The label of every axis of every operand and of the output, or None when the equation
    does not fit the ranks. Ellipsis axes get labels `.0`, `.1`, ... aligned from the right, as
    numpy broadcasts them; implicit mode (no `->`) outputs the ellipsis, then the letters used
    once, in alphabetical order."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    widths = [rank - len(t.replace(ELLIPSIS, "")) for t, rank in zip(terms, ranks, strict=True)]
    if any(w < 0 or (w and ELLIPSIS not in t) for t, w in zip(terms, widths, strict=True)):
        return None
    ellipsis = max((w for t, w in zip(terms, widths, strict=True) if ELLIPSIS in t), default=0)

    def expand(term: str, width: int) -> list[str]:
        before, _, after = term.partition(ELLIPSIS)
        dots = [f".{ellipsis - width + i}" for i in range(width)] if ELLIPSIS in term else []
        return [*before, *dots, *after]

    operands = [expand(t, w) for t, w in zip(terms, widths, strict=True)]
    if arrow:
        return operands, expand(rhs, ellipsis)
    letters = [c for t in terms for c in t.replace(ELLIPSIS, "")]
    once = sorted(c for c in set(letters) if letters.count(c) == 1)
    return operands, [f".{i}" for i in range(ellipsis)] + once


def einsum(ctx: RuleContext) -> None:
    """Einsum: one label, one index. A label the output keeps links every operand axis it names
    to its output axis (a weight's axis there makes the channel: role out); a label summed away
    links the operand axes it names (a weight's axis there reads it: role in, chosen as for
    MatMul's contraction); summed over a product of activations only (q·k in attention), no
    slice reads it and the zero-then-prune oracle could not stand for its removal: blocked.
    Ellipsis axes broadcast as numpy's do. A label written twice in one
    operand or in the output (a diagonal, a trace) is not a channel: it stays unlinked, so the
    closure check blocks it. The equation holds no sizes: there is nothing to fix."""
    names = list(ctx.node.input)
    ranks = [ctx.rank(name) for name in names]
    equation = ctx.attr("equation", b"")
    equation = equation.decode() if isinstance(equation, bytes) else str(equation)
    parsed = einsum_labels(equation, ranks) if None not in ranks and equation else None
    if parsed is None:
        return
    operands, output = parsed
    y = ctx.output(0)
    for label in dict.fromkeys(label for labels in operands for label in labels):
        if any(labels.count(label) > 1 for labels in [*operands, output]):
            continue
        spaces = [
            Space(name, labels.index(label))
            for name, labels in zip(names, operands, strict=True)
            if label in labels
        ]
        if label in output:
            for space in spaces:
                ctx.link(space, Space(y, output.index(label)))
                ctx.role(space, Role.OUT)
            continue
        for space in spaces[1:]:
            ctx.link(spaces[0], space)
        if not any(_is_weight(ctx, space) for space in spaces):
            for space in spaces:  # zeroing a reader's slice cannot stand for removing it
                ctx.block(space, "Einsum sums this axis over a product of activations")
        elif len(spaces) == 2:
            _contraction_reader(ctx, spaces[0], spaces[1])
        else:
            for space in spaces:
                ctx.role(space, Role.IN)


# ---------------------------------------------------------------------------------------------
# Quantized graphs: integer weights are sliced with their per-channel scales and zero points
# (linked to the channel, role stat: they follow it but read nothing); the oracle masks a
# reader's integer slice to its zero point, which dequantizes to exactly 0.
# ---------------------------------------------------------------------------------------------

DYNAMIC_SCALE = (
    "DynamicQuantizeLinear computes one scale over the whole tensor: removing a channel changes "
    "how every other channel is quantized (not exact)"
)


def _per_channel(ctx: RuleContext, params: Iterable[str], space: Space) -> None:
    """Vector scales and zero points along `space` follow it; scalar ones are per tensor."""
    for name in params:
        if name and ctx.size(name, 0) is not None and ctx.size(name, 0) > 1:
            if ctx.rank(name) != 1:
                ctx.block(space, f"quantization parameter {name} of rank {ctx.rank(name)}")
                continue
            ctx.link(Space(name, 0), space)
            ctx.role(Space(name, 0), Role.STAT)


def _per_tensor(ctx: RuleContext, params: Iterable[str]) -> bool:
    return all(not name or (ctx.size(name, 0) or 1) == 1 for name in params)


def quantize_linear(ctx: RuleContext) -> None:
    """QuantizeLinear / DequantizeLinear: y = saturate(x / scale + zero_point) and
    y = (x - zero_point) * scale, elementwise. Per tensor, every axis passes through; per axis
    (`axis`), the scale and zero point vectors follow that axis. Blocked quantization
    (`block_size`) has no rule."""
    x, scale, zero_point, y = ctx.input(0), ctx.input(1), ctx.input(2), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None:
        return
    if ctx.attr("block_size", 0):
        for axis in range(rank):
            for space in (Space(x, axis), Space(y, axis)):
                ctx.block(space, "blocked quantization (block_size) has no rule")
        return
    identity_all_axes(ctx, x, [y])
    if not _per_tensor(ctx, [scale, zero_point]):
        _per_channel(ctx, [scale, zero_point], ctx.space(x, ctx.attr("axis", 1)))


def dynamic_quantize_linear(ctx: RuleContext) -> None:
    """DynamicQuantizeLinear: the scale and zero point are computed from the min and max of
    the whole input, so no axis of it can lose a channel exactly: a barrier with the reason."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    identity_all_axes(ctx, x, [y])
    for axis in range(rank or 0):
        ctx.block(Space(x, axis), DYNAMIC_SCALE)


def matmul_integer(ctx: RuleContext) -> None:
    """MatMulInteger: Y = (A - a_zero_point) @ (B - b_zero_point) in int32; like MatMul, with a
    per-row A zero point following A's rows and a per-column B zero point following B's N
    axis."""
    a, b, y = ctx.input(0), ctx.input(1), ctx.output(0)
    _matmul(ctx, a, b, y)
    ra, rb = ctx.rank(a), ctx.rank(b)
    if ra is not None and ra >= 2:
        _per_channel(ctx, [ctx.input(2)], Space(a, ra - 2))
    if rb is not None and rb >= 2:
        _per_channel(ctx, [ctx.input(3)], Space(b, rb - 1))


def conv_integer(ctx: RuleContext) -> None:
    """ConvInteger: Conv on (X - x_zero_point) and (W - w_zero_point), no bias; a per-output-
    channel W zero point follows W's axis 0. X's zero point is one scalar."""
    x, w, y = ctx.input(0), ctx.input(1), ctx.output(0)
    _conv(ctx, x, w, "", y)
    _per_channel(ctx, [ctx.input(3)], Space(w, 0))


def qlinear_conv(ctx: RuleContext) -> None:
    """QLinearConv: Conv on dequantized X and W, int32 bias, requantized with one output scale.
    W's per-channel scale and zero point follow its axis 0; the output scale must be one
    scalar (a per-channel one has no rule)."""
    x, w, bias, y = ctx.input(0), ctx.input(3), ctx.input(8), ctx.output(0)
    if not _per_tensor(ctx, [ctx.input(6), ctx.input(7)]):
        ctx.block(Space(y, 1), "QLinearConv with a per-channel output scale has no rule")
    _conv(ctx, x, w, bias, y)
    _per_channel(ctx, [ctx.input(4), ctx.input(5)], Space(w, 0))


def qlinear_matmul(ctx: RuleContext) -> None:
    """QLinearMatMul: MatMul on dequantized A and B, requantized; B's per-column scale and
    zero point follow its N axis, A's per-row ones its rows. A per-column output scale has no
    rule."""
    a, b, y = ctx.input(0), ctx.input(3), ctx.output(0)
    ra, rb, ry = ctx.rank(a), ctx.rank(b), ctx.rank(y)
    if not _per_tensor(ctx, [ctx.input(6), ctx.input(7)]) and ry:
        ctx.block(Space(y, ry - 1), "QLinearMatMul with a vector output scale has no rule")
    _matmul(ctx, a, b, y)
    if ra is not None and ra >= 2:
        _per_channel(ctx, [ctx.input(1), ctx.input(2)], Space(a, ra - 2))
    if rb is not None and rb >= 2:
        _per_channel(ctx, [ctx.input(4), ctx.input(5)], Space(b, rb - 1))


def ms_qlinear_binary(ctx: RuleContext) -> None:
    """com.microsoft QLinearAdd / QLinearMul: A and B dequantized, combined, requantized; with
    scalar scales and zero points it broadcasts like Add / Mul."""
    if not _per_tensor(ctx, [ctx.input(i) for i in (1, 2, 4, 5, 6, 7)]):
        rank = ctx.rank(ctx.output(0)) or 0
        for axis in range(rank):
            ctx.block(Space(ctx.output(0), axis), f"{ctx.node.op_type} with vector scales")
        return
    broadcast(ctx, [ctx.input(0), ctx.input(3)])


def ms_qlinear_unary(ctx: RuleContext) -> None:
    """com.microsoft QLinearSigmoid / QLinearLeakyRelu / ...: elementwise on dequantized X,
    requantized with scalar scales."""
    if _per_tensor(ctx, [ctx.input(i) for i in range(1, 5)]):
        identity_all_axes(ctx, ctx.input(0), [ctx.output(0)])


def ms_qlinear_global_average_pool(ctx: RuleContext) -> None:
    """com.microsoft QLinearGlobalAveragePool: per-channel mean, requantized with scalar
    scales; the channel axis is 1, or the last one with channels_last."""
    x, y = ctx.input(0), ctx.output(0)
    rank = ctx.rank(x)
    if rank is None or not _per_tensor(ctx, [ctx.input(i) for i in range(1, 5)]):
        return
    channel = rank - 1 if ctx.attr("channels_last", 0) else 1
    if ctx.size(y, channel) is None:  # contrib ops may lack inferred shapes
        ctx.block(Space(x, channel), "QLinearGlobalAveragePool output of unknown size")
    ctx.link(Space(x, 0), Space(y, 0))
    ctx.link(Space(x, channel), Space(y, channel))


def ms_qgemm(ctx: RuleContext) -> None:
    """com.microsoft QGemm: Gemm on dequantized A and B plus an int32 bias C, requantized
    with a scalar output scale (or float output without one); B's per-column scale and zero
    point follow its N axis."""
    a, b, c, y = ctx.input(0), ctx.input(3), ctx.input(6), ctx.output(0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    if not _per_tensor(ctx, [ctx.input(1), ctx.input(2), ctx.input(7), ctx.input(8)]):
        ctx.block(Space(y, 1), "QGemm with vector A or output scales has no rule")
    a_m, a_k = (1, 0) if trans_a else (0, 1)
    b_k, b_n = (1, 0) if trans_b else (0, 1)
    ctx.link(Space(a, a_k), Space(b, b_k))
    _contraction_reader(ctx, Space(a, a_k), Space(b, b_k))
    if ctx.size(y, 1) is None:  # contrib ops may lack inferred shapes: B's rows cannot follow Y
        ctx.block(Space(b, b_n), "QGemm output of unknown size")
        return
    ctx.link(Space(b, b_n), Space(y, 1))
    ctx.role(Space(b, b_n), Role.OUT)
    ctx.link(Space(a, a_m), Space(y, 0))
    _per_channel(ctx, [ctx.input(4), ctx.input(5)], Space(b, b_n))
    if c:
        broadcast(ctx, [c], y)


UNARY_OPS = [
    "Abs",
    "Acos",
    "Acosh",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Cos",
    "Cosh",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "IsInf",
    "IsNaN",
    "LeakyRelu",
    "Log",
    "Mish",
    "Neg",
    "Not",
    "Reciprocal",
    "Relu",
    "Round",
    "Selu",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Softplus",
    "Softsign",
    "Sqrt",
    "Swish",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
]
BROADCAST_OPS = [
    "Add",
    "And",
    "BitShift",
    "Div",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Max",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Or",
    "Pow",
    "PRelu",
    "Sub",
    "Sum",
    "Where",
    "Xor",
]
POOL_OPS = [
    "AveragePool",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "LpPool",
    "MaxPool",
]
REDUCE_OPS = [
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
]

RULES: dict[str, Rule] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "GroupNormalization": group_norm,
    "LayerNormalization": layer_norm,
    "SimplifiedLayerNormalization": layer_norm,
    "RMSNormalization": layer_norm,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Hardmax": softmax,
    "Concat": concat,
    "Split": split,
    "Gather": gather,
    "Slice": slice_,
    "Pad": pad,
    "Resize": resize,
    "Upsample": resize,
    "Transpose": transpose,
    "Squeeze": squeeze_unsqueeze,
    "Unsqueeze": squeeze_unsqueeze,
    "Expand": expand,
    "Reshape": reshape,
    "Flatten": flatten,
    "Shape": shape_reader,
    "Size": shape_reader,
    "Einsum": einsum,
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": quantize_linear,
    "DynamicQuantizeLinear": dynamic_quantize_linear,
    "MatMulInteger": matmul_integer,
    "ConvInteger": conv_integer,
    "QLinearConv": qlinear_conv,
    "QLinearMatMul": qlinear_matmul,
    **{op: unary for op in UNARY_OPS},
    **{op: broadcast for op in BROADCAST_OPS},
    **{op: pool for op in POOL_OPS},
    **{op: reduce for op in REDUCE_OPS},
}


CONTRIB_RULES: dict[str, Rule] = {
    "Attention": ms_attention,
    "MultiHeadAttention": ms_multi_head_attention,
    "GroupQueryAttention": ms_group_query_attention,
    "RotaryEmbedding": ms_rotary_embedding,
    "SkipLayerNormalization": ms_skip_norm,
    "SkipSimplifiedLayerNormalization": ms_skip_norm,
    "SimplifiedLayerNormalization": layer_norm,
    "FastGelu": ms_bias_activation,
    "BiasGelu": ms_bias_activation,
    "Gelu": ms_bias_activation,
    "QuickGelu": ms_bias_activation,
    "QLinearAdd": ms_qlinear_binary,
    "QLinearMul": ms_qlinear_binary,
    "QLinearSigmoid": ms_qlinear_unary,
    "QLinearLeakyRelu": ms_qlinear_unary,
    "QLinearGlobalAveragePool": ms_qlinear_global_average_pool,
    "QGemm": ms_qgemm,
}


# Ops with bodies (subgraph attributes): no rule. Their bodies are not analysed, so every space
# they read (explicitly or from inside a body) or write is a barrier, and weights inside a body
# are never sliced; `control_flow_reason` says so where a group stops at one.
CONTROL_FLOW_BODIES = {
    "If": "then/else branches",
    "Loop": "loop body",
    "Scan": "scan body",
}


def control_flow_reason(node: onnx.NodeProto, space: Space, inside_body: bool) -> str | None:
    """Why `space` cannot shrink through control-flow `node`, or None for other ops."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in CONTROL_FLOW_BODIES:
        return None
    how = "read inside its" if inside_body else "passed to or from its"
    return (
        f"control flow {node.op_type}: {space} is {how} {CONTROL_FLOW_BODIES[node.op_type]}, "
        "which are not analysed (nothing inside a body is pruned)"
    )


def rule_for(node: onnx.NodeProto) -> Rule | None:
    """The rule of an op: default domain or com.microsoft; any other domain is a barrier."""
    if node.domain in ("", "ai.onnx"):
        return RULES.get(node.op_type)
    if node.domain == "com.microsoft":
        return CONTRIB_RULES.get(node.op_type)
    return None


# ---------------------------------------------------------------------------------------------
# Mixture of experts (issue 6). Channel rules only: the expert axis of MoE ops is not a channel
# (zeroing an expert is not removing it); graphprune.moe traces it with its own -inf semantics.
# ---------------------------------------------------------------------------------------------


def ms_moe(ctx: RuleContext) -> None:
    """com.microsoft MoE: y = sum_{e in top-k} w_e * fc2_e(act(fc1_e(x))), weights stacked
    [E, out, in]: fc1 [E, F*I, H] (F = 2 with fused SwiGLU: gate/up rows interleaved when
    swiglu_fusion=1, concatenated when 2), fc2 [E, H, I], fc3 [E, I, H], biases [E, .].
    Hidden channel h: column h of fc1/fc3 reads it, row h of fc2 (and its bias) makes it.
    Intermediate channel i (shared by every expert's index i): its fc1/fc3 rows and biases make
    it, column i of fc2 reads it. Token axes pass through; the expert axis is left unlinked."""
    x, y = ctx.input(0), ctx.output(0)
    fc1, fc1_bias, fc2, fc2_bias = (ctx.input(i) for i in (2, 3, 4, 5))
    fc3, fc3_bias = ctx.input(6), ctx.input(7)
    rank, fc1_shape = ctx.rank(x), ctx.shape(fc1)
    activation = ctx.attr("activation_type", b"relu")
    fusion = ctx.attr("swiglu_fusion", 0) if activation in (b"swiglu", b"geglu") else 0
    if rank is None or fc1_shape is None or ctx.size(fc2, 2) is None:
        return
    for axis in range(rank - 1):
        ctx.link(Space(x, axis), Space(y, axis))
    for weight, role in ((fc1, Role.IN), (fc3, Role.IN)):
        if weight:
            ctx.link(Space(x, rank - 1), Space(weight, 2))
            ctx.role(Space(weight, 2), role)
    for made in (fc2, fc2_bias):
        if made:
            ctx.link(Space(made, 1), Space(y, rank - 1))
            ctx.role(Space(made, 1), Role.OUT)
    width = ctx.size(fc2, 2)
    rows = np.arange(fc1_shape[1])
    owner = {0: rows, 1: rows // 2, 2: rows % width}.get(fusion)
    if owner is None:
        ctx.block(Space(fc2, 2), f"MoE swiglu_fusion={fusion} has no rule")
        return
    ctx.role(Space(fc2, 2), Role.IN)
    for made in (fc1, fc1_bias):
        if made:
            ctx.link(Space(made, 1), Space(fc2, 2), (rows, owner))
            ctx.role(Space(made, 1), Role.OUT)
    for made in (fc3, fc3_bias):
        if made:
            ctx.link(Space(made, 1), Space(fc2, 2))
            ctx.role(Space(made, 1), Role.OUT)


CONTRIB_RULES["MoE"] = ms_moe
