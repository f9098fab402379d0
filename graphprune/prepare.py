"""Prepare: normalize a loaded graph before analysis, without changing what it computes.

Exporters deduplicate equal tensors: the TorchScript exporter replaces every repeat by
`Identity(first_copy)`, and several nodes may read one bias vector. Left alone, such sharing
couples layers that have nothing in common but equal values (typically the all-zero biases of
freshly folded BatchNorms). We undo it where it is accidental:

- `Identity` of a constant becomes a constant of its own;
- a 1-D constant read by several nodes gets one copy per reader.

Shared weights of rank >= 2 stay shared: they are real ties (tied embeddings) and keep coupling
their readers.
"""

from __future__ import annotations

import onnx

from graphprune.edit import ConstantStore
from graphprune.graph import GraphIndex


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a normalized copy of `model` (the argument is not modified)."""
    model = _copy(model)
    _fold_constant_identities(model)
    _untie_shared_vectors(model)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _fold_constant_identities(model: onnx.ModelProto) -> None:
    index = GraphIndex.build(model)
    store = ConstantStore(model)
    folded = []
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        source, target = node.input[0], node.output[0]
        if index.is_constant(source) and target not in index.graph_outputs:
            store.add_named(target, index.constants[source])
            folded.append(position)
    for position in reversed(folded):
        del model.graph.node[position]


def _untie_shared_vectors(model: onnx.ModelProto) -> None:
    index = GraphIndex.build(model)
    store = ConstantStore(model)
    for name, value in index.constants.items():
        readers = index.consumers.get(name, [])
        if value.ndim != 1 or len(readers) < 2:
            continue
        for position in readers[1:]:
            node = model.graph.node[position]
            for i, input_name in enumerate(node.input):
                if input_name == name:
                    store.private_copy(node, i)
