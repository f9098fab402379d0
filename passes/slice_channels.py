"""Rewriting pass: apply a set of removals to the graph, physically.

For every pruned group, each space keeps the indices whose unit survives:

    kept(space) = { i : labels[space][i] not in removed_units }

Constants in the group are sliced along their axis (np.delete; a constant cut on two axes by two
groups is cut on both, the cuts commute), the group's fixes rewrite the attributes and shape
constants that encode sizes (Conv `group`, Split sizes, Reshape/Expand targets, Slice bounds),
activations shrink by themselves, stale value_info is dropped, and onnx-graphsurgeon removes
what became unused and re-sorts the graph.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune.depgraph import DepGraph
from graphprune.edit import ConstantStore
from graphprune.ops import Space


def slice_channels(
    model: onnx.ModelProto, dep: DepGraph, removals: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A pruned copy of `model` (the model `dep` was built from) without the removed units."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    removed_indices = _removed_indices(dep, removals)
    if not removed_indices:
        return pruned
    store = ConstantStore(pruned)

    def size(space: Space) -> int:
        return dep.graph.nodes[space]["size"] - len(removed_indices.get(space, ()))

    def kept(space: Space) -> np.ndarray:
        every = np.arange(dep.graph.nodes[space]["size"])
        return np.setdiff1d(every, removed_indices.get(space, ()))

    for fix in _fixes(dep, removals):
        fix.apply(pruned, store, size, kept)
    _slice_constants(store, dep, removed_indices)
    del pruned.graph.value_info[:]
    return cleanup(pruned)


def _removed_indices(dep: DepGraph, removals: Mapping[str, np.ndarray]) -> dict[Space, np.ndarray]:
    removed = {}
    for group_id, units in removals.items():
        if len(units) == 0:
            continue
        group = dep.group(group_id)
        for space in group.spaces:
            removed[space] = group.indices(space, np.asarray(units))
    return removed


def _fixes(dep: DepGraph, removals: Mapping[str, np.ndarray]):
    seen = set()
    for group_id, units in removals.items():
        for fix in dep.group(group_id).fixes if len(units) else ():
            if fix not in seen:
                seen.add(fix)
                yield fix


def _slice_constants(store: ConstantStore, dep: DepGraph, removed: dict[Space, np.ndarray]) -> None:
    cuts: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for space, indices in removed.items():
        if dep.index.is_constant(space.tensor) and len(indices):
            cuts[space.tensor].append((space.axis, indices))
    for tensor, tensor_cuts in cuts.items():
        value = store.get(tensor)
        for axis, indices in tensor_cuts:
            value = np.delete(value, indices, axis=axis)
        store.set(tensor, value)


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop unused nodes and constants, sort topologically (onnx-graphsurgeon), keep metadata."""
    graph = gs.import_onnx(model)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    cleaned = gs.export_onnx(graph, do_type_check=False)
    cleaned.ir_version = model.ir_version
    del cleaned.opset_import[:]
    cleaned.opset_import.extend(model.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(cleaned, field, getattr(model, field))
    del cleaned.metadata_props[:]
    cleaned.metadata_props.extend(model.metadata_props)
    del cleaned.functions[:]
    cleaned.functions.extend(model.functions)
    return cleaned
