"""In-place access to a model's constants, wherever they live (initializer or Constant node)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


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
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
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
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.model.graph.initializer.append(tensor)
        self._initializers[name] = self.model.graph.initializer[-1]
        return name

    def add_named(self, name: str, value: np.ndarray) -> None:
        """A new initializer called exactly `name` (the caller knows the name is free)."""
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
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
