"""Report: parameters, MACs and file size before and after, as a table or a JSON-ready dict.

MACs are counted from inferred shapes for the ops that dominate cost:
    Conv:          |Y| * C_in/group * prod(kernel)
    ConvTranspose: |X| * C_out/group * prod(kernel)
    Gemm, MatMul:  |Y| * K
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from math import prod

import onnx

from graphprune.edit import set_dim
from graphprune.graph import GraphIndex, attribute
from graphprune.load import infer_shapes, weightless
from graphprune.prepare import prepare, refine_shapes


@dataclass
class Summary:
    params: int
    macs: int
    nodes: int
    ops: dict[str, int]
    bytes: int | None = None  # file size with external data, when the model is on disk

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(
    model: onnx.ModelProto,
    file_bytes: int | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    macs: bool = True,
) -> Summary:
    """Counts for `model`; MACs at `input_shapes` when its inputs have dynamic dimensions."""
    constants = GraphIndex.build(model).constants
    params = sum(constants.size(name) for name in constants if constants.is_float(name))
    ops = Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")
    total_macs = count_macs(model, input_shapes or {}) if macs else 0
    return Summary(
        int(params), total_macs, sum(ops.values()), dict(sorted(ops.items())), file_bytes
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
    return "\n".join(lines)
