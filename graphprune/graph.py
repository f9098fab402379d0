"""A read-only index over an ONNX graph: who produces and consumes each tensor, static shapes,
and constant values (initializers and Constant nodes alike, so paddle2onnx-style models whose
weights are Constant nodes are handled the same way as torch exports)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None  # a static size, a symbolic name, or unknown


class Constants(Mapping[str, np.ndarray]):
    """Constant tensors by name, converted to numpy only when read.

    Rules need the values of small shape constants only; weights are read once by scoring and
    once by rewriting. Converting every initializer up front would copy the whole model each
    time an index is built. Small values are cached; large ones are converted on each read.
    """

    CACHE_MAX_ELEMENTS = 4096

    def __init__(self) -> None:
        self._tensors: dict[str, onnx.TensorProto] = {}
        self._cache: dict[str, np.ndarray] = {}

    def add(self, name: str, tensor: onnx.TensorProto) -> None:
        self._tensors[name] = tensor

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._tensors[name].dims)

    def elem_type(self, name: str) -> int:
        return self._tensors[name].data_type

    def size(self, name: str) -> int:
        return int(np.prod(self.shape(name), dtype=np.int64))

    def is_float(self, name: str) -> bool:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.elem_type(name))
        return bool(np.issubdtype(dtype, np.floating))

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._cache:
            return self._cache[name]
        value = numpy_helper.to_array(self._tensors[name])
        if value.size <= self.CACHE_MAX_ELEMENTS:
            self._cache[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


@dataclass
class GraphIndex:
    model: onnx.ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    shapes: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    constants: Constants = field(default_factory=Constants)
    graph_inputs: set[str] = field(default_factory=set)
    graph_outputs: set[str] = field(default_factory=set)
    opset: int = 0

    @classmethod
    def build(cls, model: onnx.ModelProto) -> GraphIndex:
        index = cls(model=model)
        graph = model.graph
        index.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        for tensor in graph.initializer:
            index.constants.add(tensor.name, tensor)
        for value in [*graph.input, *graph.output, *graph.value_info]:
            index._record_type(value)
        index.graph_inputs = {v.name for v in graph.input} - set(index.constants)
        index.graph_outputs = {v.name for v in graph.output}
        for position, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    index.producer[name] = position
            for name in all_inputs(node):
                index.consumers[name].append(position)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensor = _constant_tensor(node)
                if tensor is not None:
                    index.constants.add(node.output[0], tensor)
        for name in index.constants:
            index.shapes[name] = index.constants.shape(name)
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


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    attr = node.attribute[0] if node.attribute else None
    if attr is None:
        return None
    if attr.name == "value":
        return attr.t
    simple = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if attr.name in simple:
        value = np.asarray(onnx.helper.get_attribute_value(attr), dtype=simple[attr.name])
        return numpy_helper.from_array(value)
    return None  # sparse or string constants: never channel data


def all_inputs(node: onnx.NodeProto) -> list[str]:
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
        reads.extend(name for name in all_inputs(node) if name not in local)
        local.update(node.output)
    return reads
