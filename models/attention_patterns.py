"""Dump how one attention layer appears in an exported ONNX graph (for ATTENTION_PATTERNS.md).

For the first ``Softmax`` of a graph (``--layer N``: the N-th), it finds the q/k/v
projections (the nearest ``MatMul``/``Gemm`` ancestors with a constant weight) and
the output projection (the first such node downstream of the softmax), then
prints every node on a path between them in graph order. Side inputs that are not
on such a path (reshape targets, scales, masks, RoPE tables) are spelled out:
small constants by value, larger ones by shape, computed ones as a nested
expression a few levels deep (``Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])``).
Graphs with a fused ``com.microsoft::Attention``/``MultiHeadAttention`` node (no
softmax) print that node and its inputs instead.

Command line::

    python -m models.attention_patterns NAME [NAME ...] [--exporter E] [--layer N] [--cache DIR]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

FUSED_ATTENTION = ("Attention", "MultiHeadAttention", "GroupQueryAttention")
PROJECTIONS = ("MatMul", "Gemm")
MAX_VALUES = 8  # constants with at most this many elements are printed by value
DEPTH = 4  # nesting depth of computed side-input expressions


class Graph:
    """Index of one ONNX graph: producers, consumers, constants and inferred shapes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        with_shapes = onnx.shape_inference.infer_shapes(model)
        self.nodes = list(model.graph.node)
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.inputs = {v.name for v in model.graph.input}
        values = [*with_shapes.graph.value_info, *with_shapes.graph.output]
        self.shapes = {v.name: _dims(v) for v in values}

    def is_const(self, name: str) -> bool:
        """True for initializers and Constant-node outputs."""
        return name in self.consts

    def is_projection(self, node: onnx.NodeProto) -> bool:
        """A MatMul/Gemm whose weight (second input) is a constant."""
        return node.op_type in PROJECTIONS and self.is_const(node.input[1])

    def data_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Non-empty, non-constant inputs of ``node``."""
        return [i for i in node.input if i and not self.is_const(i)]


def _dims(value: onnx.ValueInfoProto) -> str:
    """``[batch, 16, 4, 16]``-style shape text, ``?`` for unknown dims."""
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return ""
    dims = [
        d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tt.shape.dim
    ]
    return "[" + ", ".join(dims) + "]"


def _value_text(arr: np.ndarray) -> str:
    """A constant by value when small, else by shape and dtype."""
    if arr.size <= MAX_VALUES:
        flat = arr.reshape(-1).tolist()
        text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat)
        return f"[{text}]" if arr.ndim else text
    return f"W{list(arr.shape)}:{arr.dtype}"


def describe(g: Graph, name: str, depth: int = DEPTH, names: dict[str, str] | None = None) -> str:
    """An expression for tensor ``name``: constant value, graph input or nested producers.

    Tensors already printed (in ``names``) appear by their short name; the input of
    a ``Shape`` that is not one of them is ``h:<op that made it>``.
    """
    names = names or {}
    if name in names:
        return names[name]
    if g.is_const(name):
        return _value_text(g.consts[name])
    if name in g.inputs:
        return f"<{name}>"
    node = g.producer.get(name)
    if node is None:
        return f"<{name}>"
    if node.op_type == "Shape":
        return f"Shape({_shape_source(g, node.input[0], names)}){_attrs(node)}"
    if depth == 0:
        return f"{node.op_type}(…)"
    args = ", ".join(describe(g, i, depth - 1, names) for i in node.input if i)
    index = list(node.output).index(name)
    which = f"[output {index}]" if index else ""
    return f"{node.op_type}({args}){_attrs(node)}{which}"


def _shape_source(g: Graph, name: str, names: dict[str, str]) -> str:
    """What a ``Shape`` reads: a printed tensor, a graph input, or ``h:<producer op>``."""
    if name in names:
        return names[name]
    if name in g.inputs:
        return f"<{name}>"
    node = g.producer.get(name)
    return f"h:{node.op_type}" if node is not None else "h"


def _ancestor_projections(g: Graph, start: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The nearest projection nodes above ``start`` along every data path."""
    found: dict[int, onnx.NodeProto] = {}
    seen: set[int] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        for name in g.data_inputs(node):
            parent = g.producer.get(name)
            if parent is None or id(parent) in seen:
                continue
            seen.add(id(parent))
            if g.is_projection(parent):
                found[id(parent)] = parent
            elif parent.op_type != "Shape":
                stack.append(parent)
    return sorted(found.values(), key=lambda n: g.order[id(n)])


def _next_projection(g: Graph, start: onnx.NodeProto) -> onnx.NodeProto | None:
    """The first projection node (in graph order) downstream of ``start``."""
    best: onnx.NodeProto | None = None
    seen: set[int] = set()
    stack = [start]
    while stack:
        node = stack.pop()
        for out in node.output:
            for child in g.consumers.get(out, []):
                if id(child) in seen:
                    continue
                seen.add(id(child))
                if g.is_projection(child):
                    if best is None or g.order[id(child)] < g.order[id(best)]:
                        best = child
                else:
                    stack.append(child)
    return best


def _between(g: Graph, sources: list[onnx.NodeProto], sink: onnx.NodeProto) -> list[Any]:
    """Nodes on a data path from any of ``sources`` to ``sink`` (both ends included)."""
    down: set[int] = set()
    stack = list(sources)
    while stack:
        node = stack.pop()
        for out in node.output:
            for child in g.consumers.get(out, []):
                if id(child) not in down and child is not sink:
                    down.add(id(child))
                    stack.append(child)
    up: set[int] = set()
    stack = [sink]
    while stack:
        node = stack.pop()
        for name in g.data_inputs(node):
            parent = g.producer.get(name)
            if parent is not None and id(parent) not in up:
                up.add(id(parent))
                stack.append(parent)
    keep = {id(n) for n in sources} | {id(sink)} | (down & up)
    return [n for n in g.nodes if id(n) in keep]


def _attrs(node: onnx.NodeProto) -> str:
    """Short attribute text (``perm=[0, 2, 1, 3]``), tensors and graphs left out."""
    parts = []
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, (int, float, str, list)):
            parts.append(f"{attr.name}={value}")
    return " {" + ", ".join(parts) + "}" if parts else ""


def _node_line(g: Graph, node: onnx.NodeProto, names: dict[str, str]) -> str:
    """One printed node: ``t5 = Reshape(t4, [0, 0, 4, 16]) -> [2, 16, 4, 16]``."""
    args = []
    for name in node.input:
        if not name:
            continue
        args.append(describe(g, name, DEPTH, names))
    for out in node.output:
        names[out] = f"t{sum(v.startswith('t') for v in names.values()) + 1}"
    out_names = ", ".join(names[o] for o in node.output)
    domain = f"{node.domain}::" if node.domain else ""
    shape = g.shapes.get(node.output[0], "")
    return (
        f"{out_names} = {domain}{node.op_type}({', '.join(args)}){_attrs(node)}  {shape}".rstrip()
    )


def layer_pattern(model: onnx.ModelProto, layer: int = 0) -> list[str]:
    """The printed nodes of attention layer ``layer`` of ``model`` (see module docstring)."""
    g = Graph(model)
    fused = [n for n in g.nodes if n.op_type in FUSED_ATTENTION]
    if fused:
        node = fused[layer]
        domain = f"{node.domain}::" if node.domain else ""
        return [f"{domain}{node.op_type}{_attrs(node)}"] + [
            f"    input {i}: {describe(g, name, 2)}" for i, name in enumerate(node.input) if name
        ]
    softmaxes = [n for n in g.nodes if n.op_type == "Softmax"]
    if len(softmaxes) <= layer:
        return [f"(no Softmax number {layer} and no fused attention node)"]
    softmax = softmaxes[layer]
    sink = _next_projection(g, softmax)
    if sink is None:
        return ["(no projection after the Softmax)"]
    projections = _ancestor_projections(g, sink)
    names: dict[str, str] = {}
    for proj in projections:
        for name in g.data_inputs(proj):
            names.setdefault(name, "x")
    return [_node_line(g, n, names) for n in _between(g, projections, sink)]


def dump(path: Path, title: str, layer: int = 0) -> str:
    """Markdown section with attention layer ``layer``'s nodes of the file at ``path``."""
    lines = layer_pattern(onnx.load(str(path)), layer)
    return f"### {title}\n\n```\n" + "\n".join(lines) + "\n```\n"


def main(argv: Iterable[str] | None = None) -> None:
    """Print the attention pattern of zoo entries (exported on demand)."""
    from models.zoo import ZOO, export

    parser = argparse.ArgumentParser(prog="python -m models.attention_patterns")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--exporter", default=None, help="default: every exporter of the entry")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--layer", type=int, default=0, help="which attention (0 = first)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    for name in args.names:
        for exporter in [args.exporter] if args.exporter else ZOO[name].exporters:
            path = export(name, exporter, args.cache)
            title = f"{name} ({exporter})" + (f", attention {args.layer}" if args.layer else "")
            print(dump(path, title, args.layer))


if __name__ == "__main__":
    main()
