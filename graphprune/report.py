"""Report: parameters, MACs and file size before and after, as a table or a JSON-ready dict.

Parameters are the elements of the constant tensors (initializers and Constant nodes, in the
main graph and in every If/Loop/Scan body) that carry learned values, reported by dtype:
    float tensors (float32/16, bfloat16, float64, float8): every one, except a constant read
        only as a shape or index operand (Reshape targets, Slice bounds, Gather indices, axes,
        pads, Resize scales, Clip bounds; `NON_PARAMETER_INPUTS`);
    integer tensors (int8, uint8, int4, int32, ...): those that a quantized weight op reads as
        data (`INTEGER_WEIGHT_INPUTS`: DequantizeLinear's input and zero point, MatMulInteger,
        ConvInteger, QLinear*, the table of an embedding Gather), directly or through a
        Cast/Identity/Transpose/Reshape. Scales and zero points count as their own dtype.
        Integer constants of shape arithmetic (position ids, Reshape targets) never count.
Packed low-bit weights (MatMulNBits' uint8 blocks) count as stored elements.

MACs are counted from inferred shapes for the ops that dominate cost:
    Conv:          |Y| * C_in/group * prod(kernel)
    ConvTranspose: |X| * C_out/group * prod(kernel)
    Gemm, MatMul:  |Y| * K
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from math import prod

import onnx

from graphprune.edit import set_dim
from graphprune.graph import GraphIndex, attribute
from graphprune.load import infer_shapes, weightless
from graphprune.prepare import prepare, refine_shapes

# (op type -> input positions) read as shapes, indices, axes or bounds: never parameters
NON_PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Gather": (1,),
    "GatherElements": (1,),
    "GatherND": (1,),
    "ScatterElements": (1,),
    "ScatterND": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Pad": (1, 2, 3),
    "TopK": (1,),
    "Split": (1,),
    "OneHot": (0, 1),
    "CumSum": (1,),
    "Trilu": (1,),
    "Clip": (1, 2),
    "Dropout": (1, 2),
    "Where": (0,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL1": (1,),
    "ReduceL2": (1,),
    "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,),
}
# (op type -> input positions, None for all) where an integer constant is a quantized weight
INTEGER_WEIGHT_INPUTS: dict[str, tuple[int, ...] | None] = {
    "DequantizeLinear": (0, 2),
    "QuantizeLinear": (2,),
    "MatMulInteger": None,
    "ConvInteger": None,
    "MatMulIntegerToFloat": None,
    "DynamicQuantizeMatMul": None,
    "DynamicQuantizeLSTM": None,
    "MatMulNBits": None,
    "GatherBlockQuantized": (0, 2, 3),
    "QGemm": None,
    "QAttention": None,
    "Gather": (0,),  # an embedding table (int8 tables are then dequantized)
}
# ops that pass an integer constant on unchanged in meaning (data input 0 only)
INTEGER_PASS_THROUGH = {"Cast", "CastLike", "Identity", "Transpose", "Reshape", "Flatten"}
# float ops that read a (cast) integer constant as a weight
FLOAT_WEIGHT_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Gather"}
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
    *(
        getattr(onnx.TensorProto, name)
        for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")
        if hasattr(onnx.TensorProto, name)
    ),
}
INTEGER_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
    *(
        getattr(onnx.TensorProto, name)
        for name in ("INT4", "UINT4", "INT2", "UINT2")
        if hasattr(onnx.TensorProto, name)
    ),
}


@dataclass
class Summary:
    params: int
    macs: int
    nodes: int
    ops: dict[str, int]
    bytes: int | None = None  # file size with external data, when the model is on disk
    params_by_dtype: dict[str, int] = field(default_factory=dict)  # dtype name -> elements
    params_in_subgraphs: int = 0  # of `params`, those inside If/Loop/Scan bodies

    def as_dict(self) -> dict:
        return asdict(self)

    def params_text(self) -> str:
        """`22,713,600 parameters (int8 21.3M, float32 1.4M)` (see `params_text`)."""
        return params_text(self.params, self.params_by_dtype, self.params_in_subgraphs)


@dataclass
class ParamCount:
    """Parameters of a model (see the module docstring for what counts)."""

    total: int
    by_dtype: dict[str, int]
    in_subgraphs: int
    counted: set[str]  # names of the main graph's constants that count


def count_params(model: onnx.ModelProto) -> ParamCount:
    """Parameters of `model`: main graph and every subgraph, each constant once."""
    constants: dict[tuple[int, str], tuple[onnx.TensorProto, bool]] = {}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for graph_number, (graph, nested) in enumerate(_all_graphs(model.graph)):
        for tensor in graph.initializer:
            constants[graph_number, tensor.name] = (tensor, nested)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None and node.output:
                    constants[graph_number, node.output[0]] = (value, nested)
            for position, name in enumerate(node.input):
                if name:
                    readers.setdefault(name, []).append((node, position))
    by_dtype: Counter = Counter()
    in_subgraphs, counted = 0, set()
    for (_, name), (tensor, nested) in constants.items():
        if not _is_parameter(name, tensor.data_type, readers):
            continue
        size = prod(int(d) for d in tensor.dims)
        by_dtype[dtype_name(tensor.data_type)] += size
        in_subgraphs += size if nested else 0
        if not nested:
            counted.add(name)
    ordered = dict(sorted(by_dtype.items(), key=lambda item: (-item[1], item[0])))
    return ParamCount(sum(ordered.values()), ordered, in_subgraphs, counted)


def _all_graphs(graph: onnx.GraphProto, nested: bool = False):
    """`graph` and every graph nested in its nodes' attributes, with whether it is nested."""
    yield graph, nested
    for node in graph.node:
        for attr in node.attribute:
            for body in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_graphs(body, True)


def _is_parameter(name: str, elem_type: int, readers: Mapping) -> bool:
    if elem_type in FLOAT_TYPES:
        uses = readers.get(name, [])
        # unread constants (a graph output, a dead tensor) still count: they are stored weights
        return not uses or any(
            position not in NON_PARAMETER_INPUTS.get(node.op_type, ()) for node, position in uses
        )
    if elem_type in INTEGER_TYPES:
        return _read_as_integer_weight(name, readers, depth=0)
    return False


def _read_as_integer_weight(name: str, readers: Mapping, depth: int) -> bool:
    """Whether integer constant `name` reaches a quantized weight input (or, cast to float,
    a weight op) directly or through pass-through ops."""
    for node, position in readers.get(name, []):
        op = node.op_type
        if op in INTEGER_WEIGHT_INPUTS:
            wanted = INTEGER_WEIGHT_INPUTS[op]
            if wanted is None or position in wanted:
                return True
        if op.startswith("QLinear"):
            return True
        if (
            depth > 0
            and op in FLOAT_WEIGHT_OPS
            and position not in NON_PARAMETER_INPUTS.get(op, ())
        ):
            return True  # reached through a Cast: a float weight stored as integers
        passes_on = op in INTEGER_PASS_THROUGH and position == 0 and depth < 4
        if passes_on and any(
            _read_as_integer_weight(out, readers, depth + 1) for out in node.output
        ):
            return True
    return False


def dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type (float32, int8, int4, bfloat16...)."""
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def params_text(total: int, by_dtype: Mapping[str, int], in_subgraphs: int = 0) -> str:
    """`22,713,600 parameters (int8 21.3M, float32 1.4M)`; one dtype: `1,234 parameters
    (float16)`, float32 alone unsaid; and how many live in If/Loop/Scan bodies when any do."""
    only_float32 = set(by_dtype) <= {"float32"}
    notes = [
        ""
        if only_float32 and not in_subgraphs
        else ", ".join(
            f"{name} {_short(n)}" if len(by_dtype) > 1 else name for name, n in by_dtype.items()
        )
    ]
    if in_subgraphs:
        notes.append(f"{in_subgraphs:,} in If/Loop/Scan bodies")
    notes = [note for note in notes if note]
    return f"{total:,} parameters" + (f" ({'; '.join(notes)})" if notes else "")


def breakdown_adds(*counts: Mapping) -> bool:
    """Whether the by-dtype breakdown says more than the total: some parameters are not
    float32, or live in If/Loop/Scan bodies."""
    return any(
        set(c["params_by_dtype"]) - {"float32"} or c["params_in_subgraphs"] for c in counts
    )


def _short(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def summarize(
    model: onnx.ModelProto,
    file_bytes: int | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    macs: bool = True,
) -> Summary:
    """Counts for `model`; MACs at `input_shapes` when its inputs have dynamic dimensions."""
    params = count_params(model)
    ops = Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")
    total_macs = count_macs(model, input_shapes or {}) if macs else 0
    return Summary(
        params.total,
        total_macs,
        sum(ops.values()),
        dict(sorted(ops.items())),
        file_bytes,
        params.by_dtype,
        params.in_subgraphs,
    )


def count_macs(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one run at `input_shapes` (see the module docstring), counted on
    a weightless copy: shapes are all it needs."""
    skeleton = sized_skeleton(model, input_shapes)
    # at fixed input sizes, run-time size arithmetic is constant: fold it so that every shape
    # downstream (position ids, expanded masks) is known
    prepare(skeleton, in_place=True)
    infer_shapes(skeleton, in_place=True)
    refine_shapes(skeleton)
    return _macs(GraphIndex.build(skeleton))


def sized_skeleton(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
) -> onnx.ModelProto:
    """`weightless(model)` with the graph inputs named in `input_shapes` fixed to those sizes
    (types inferred earlier, at other sizes, are dropped)."""
    skeleton = weightless(model)
    del skeleton.graph.value_info[:]
    for value in skeleton.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[value.name], strict=True):
                set_dim(dim, size)
    return skeleton


def _macs(index: GraphIndex) -> int:
    total = 0
    for node in index.model.graph.node:
        shape = {name: index.shapes.get(name) for name in [*node.input, *node.output] if name}
        if any(s is None or not all(isinstance(d, int) for d in s) for s in shape.values()):
            continue
        total += node_macs(node, shape)
    return total


def node_macs(node: onnx.NodeProto, shape: dict) -> int:
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and len(node.input) > 1:
        weight = shape[node.input[1]]
        per_output = weight[1] * prod(weight[2:])  # Conv: C_in/g * k; ConvTranspose: C_out/g * k
        counted = node.output[0] if op == "Conv" else node.input[0]
        return prod(shape[counted]) * per_output
    if op == "Gemm":
        a = shape[node.input[0]]
        k = a[0] if attribute(node, "transA", 0) else a[1]
        return prod(shape[node.output[0]]) * k
    if op == "MatMul":
        return prod(shape[node.output[0]]) * shape[node.input[0]][-1]
    return 0


def table(before: Summary, after: Summary) -> str:
    """A small before/after table with ratios."""
    rows = [
        ("parameters", before.params, after.params),
        ("MACs", before.macs, after.macs),
        ("nodes", before.nodes, after.nodes),
    ]
    if before.bytes is not None and after.bytes is not None:
        rows.append(("file bytes", before.bytes, after.bytes))
    lines = [f"{'':<12}{'before':>16}{'after':>16}{'after/before':>14}"]
    for name, b, a in rows:
        ratio = f"{a / b:.3f}" if b else "-"
        lines.append(f"{name:<12}{b:>16,}{a:>16,}{ratio:>14}")
    if breakdown_adds(before.as_dict(), after.as_dict()):
        lines.append(f"before: {before.params_text()}")
        lines.append(f"after:  {after.params_text()}")
    return "\n".join(lines)
