"""In-place access to a model's constants, wherever they live (initializer or Constant node)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.graph import all_inputs


class ConstantStore:
    """Read and replace constant tensors of `model` by name, keeping them where they were."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self._initializers = {t.name: t for t in model.graph.initializer}
        self._constant_nodes = {
            n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.output
        }
        self._taken = set(self._initializers) | {o for n in model.graph.node for o in n.output}
        self._private: dict[tuple[str, int], str] = {}

    def get(self, name: str) -> np.ndarray:
        if name in self._initializers:
            return numpy_helper.to_array(self._initializers[name])
        node = self._constant_nodes[name]
        return numpy_helper.to_array(onnx.helper.get_attribute_value(node.attribute[0]))

    def set(self, name: str, value: np.ndarray) -> None:
        tensor = numpy_helper.from_array(_contiguous(value), name)
        if name in self._initializers:
            self._initializers[name].CopyFrom(tensor)
            return
        node = self._constant_nodes[name]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))

    def add(self, hint: str, value: np.ndarray) -> str:
        """A new initializer with a fresh name derived from `hint`."""
        name, n = hint, 0
        while name in self._taken:
            n += 1
            name = f"{hint}_{n}"
        self._taken.add(name)
        tensor = numpy_helper.from_array(_contiguous(value), name)
        self.model.graph.initializer.append(tensor)
        self._initializers[name] = self.model.graph.initializer[-1]
        return name

    def add_named(self, name: str, value: np.ndarray) -> None:
        """A new initializer called exactly `name` (the caller knows the name is free)."""
        tensor = numpy_helper.from_array(_contiguous(value), name)
        self.model.graph.initializer.append(tensor)
        self._initializers[name] = self.model.graph.initializer[-1]

    def private_copy(self, node: onnx.NodeProto, input_index: int) -> str:
        """Give `node` its own copy of the constant at `input_index`, so editing it touches no
        other consumer (exporters share shape constants between unrelated Reshapes)."""
        key = (node.output[0], input_index)  # outputs are unique (SSA); node wrappers are not
        if key not in self._private:
            source = node.input[input_index]
            self._private[key] = self.add(f"{source}_copy", self.get(source))
            node.input[input_index] = self._private[key]
        return self._private[key]


def copy_structure(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without its initializers: every other field of the model and graph.
    Copying a model and then replacing its weights would hold them twice."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    return copy


def _copy_fields(source, target, skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        if descriptor.is_repeated:
            getattr(target, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


def remove_unused(model: onnx.ModelProto) -> None:
    """Delete, in place, nodes whose outputs nothing reads and constants nobody uses (what a
    rewrite leaves behind: replaced shape constants, orphaned Constant nodes)."""
    graph = model.graph
    while True:
        used = {o.name for o in graph.output} | {n for node in graph.node for n in all_inputs(node)}
        dead = [i for i, node in enumerate(graph.node) if not used.intersection(node.output)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


def resize_declared_weights(model: onnx.ModelProto, declared: set[str]) -> None:
    """Make graph inputs that are also initializers (torch's keep_initializers_as_inputs)
    declare their weight's shape after a rewrite, and drop those whose weight was deleted.
    `declared`: the names that were such inputs before the rewrite."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    graph_inputs = model.graph.input
    for i in reversed(range(len(graph_inputs))):
        name = graph_inputs[i].name
        if name not in declared:
            continue
        if name not in shapes:
            del graph_inputs[i]
            continue
        shape = graph_inputs[i].type.tensor_type.shape
        del shape.dim[:]
        for size in shapes[name]:
            set_dim(shape.dim.add(), int(size))


def unknown_dynamic_sizes(model: onnx.ModelProto, outputs: bool = True) -> None:
    """Make each graph input (and output) size declared as -1 (paddle2onnx) or 0 (some VAD
    exports) an unknown size, in place. Both mean "dynamic"; written as numbers, onnxruntime
    accepts only that number and onnx's checker holds the graph to it, so a pruned model would
    fail the save check. An unknown size is the plain form of "dynamic", and the shortest one
    on disk (the varint of -1 takes ten bytes)."""
    for value in [*model.graph.input, *(model.graph.output if outputs else [])]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()


def set_dim(dim: onnx.TensorShapeProto.Dimension, size: int | str) -> None:
    """Make `dim` a static size (int) or a symbolic one (str)."""
    dim.Clear()
    if isinstance(size, int):
        dim.dim_value = size
    else:
        dim.dim_param = size


def _contiguous(value: np.ndarray) -> np.ndarray:
    """`value` in C order, keeping its rank (np.ascontiguousarray makes a scalar 1-D)."""
    return np.asarray(value, order="C")
