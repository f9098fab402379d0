"""A read-only index over an ONNX graph: who produces and consumes each tensor, static shapes,
and constant values (initializers and Constant nodes alike, so paddle2onnx-style models whose
weights are Constant nodes are handled the same way as torch exports)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None  # a static size, a symbolic name, or unknown


@dataclass
class GraphIndex:
    model: onnx.ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    shapes: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    graph_inputs: set[str] = field(default_factory=set)
    graph_outputs: set[str] = field(default_factory=set)
    opset: int = 0

    @classmethod
    def build(cls, model: onnx.ModelProto) -> GraphIndex:
        index = cls(model=model)
        graph = model.graph
        index.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        for tensor in graph.initializer:
            index.constants[tensor.name] = numpy_helper.to_array(tensor)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            index._record_type(value)
        index.graph_inputs = {v.name for v in graph.input} - set(index.constants)
        index.graph_outputs = {v.name for v in graph.output}
        for position, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    index.producer[name] = position
            for name in _all_inputs(node):
                index.consumers[name].append(position)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node)
                if value is not None:
                    index.constants[node.output[0]] = value
        for name, value in index.constants.items():
            index.shapes[name] = tuple(int(d) for d in value.shape)
        return index

    def _record_type(self, value: onnx.ValueInfoProto) -> None:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            return
        self.dtypes[value.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            self.shapes[value.name] = tuple(_dim(d) for d in tensor_type.shape.dim)

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def node(self, position: int) -> onnx.NodeProto:
        return self.model.graph.node[position]

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def static_size(self, name: str, axis: int) -> int | None:
        shape = self.shapes.get(name)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        size = shape[axis]
        return size if isinstance(size, int) else None

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def is_constant(self, name: str) -> bool:
        return name in self.constants


def node_label(node: onnx.NodeProto, position: int) -> str:
    """How a node is named in messages: its name, or op type and position when it has none."""
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} #{position}"


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    attr = node.attribute[0] if node.attribute else None
    if attr is None:
        return None
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    simple = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if attr.name in simple:
        return np.asarray(onnx.helper.get_attribute_value(attr), dtype=simple[attr.name])
    return None  # sparse or string constants: never channel data


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus every outer-scope name a subgraph (If/Loop/Scan body) reads.

    Subgraph reads are invisible in node.input; counting them as inputs makes the node a
    consumer, so an op without a rule blocks them instead of letting them shrink unseen.
    """
    names = [name for name in node.input if name]
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            names.extend(_subgraph_reads(graph))
    return names


def _subgraph_reads(graph: onnx.GraphProto) -> list[str]:
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    reads = []
    for node in graph.node:
        reads.extend(name for name in _all_inputs(node) if name not in local)
        local.update(node.output)
    return reads
