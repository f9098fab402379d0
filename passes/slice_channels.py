"""Rewriting pass: apply a set of removals to the graph, physically.

For every pruned group, each space keeps the indices whose unit survives:

    kept(space) = { i : labels[space][i] not in removed_units }

Constants in the group are sliced along their axis (np.delete; a constant cut on two axes by two
groups is cut on both, the cuts commute), the group's fixes rewrite the attributes and shape
constants that encode sizes (Conv `group`, Split sizes, Reshape/Expand targets, Slice bounds),
activations shrink by themselves, stale value_info is dropped, and what became unused (replaced
shape constants) is deleted in place. Weights that are also declared graph inputs (torch's
keep_initializers_as_inputs) declare their new shapes. No node is added or moved, so the order
stays valid; an import/export through onnx-graphsurgeon would hold a second copy of every weight
for nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.depgraph import DepGraph
from graphprune.edit import (
    ConstantStore,
    copy_structure,
    remove_unused,
    resize_declared_weights,
)
from graphprune.ops import Space
from graphprune.progress import progress


def slice_channels(
    model: onnx.ModelProto, dep: DepGraph, removals: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A pruned copy of `model` (the model `dep` was built from) without the removed units."""
    removed_indices = _removed_indices(dep, removals)
    cuts = _cuts(dep, removed_indices)
    pruned = copy_structure(model)
    tensors = progress(model.graph.initializer, "rewriting", len(model.graph.initializer))
    for tensor in tensors:  # each weight is written once, sliced or as it was
        if tensor.name in cuts:
            value = _cut(numpy_helper.to_array(tensor), cuts[tensor.name])
            pruned.graph.initializer.append(numpy_helper.from_array(value, tensor.name))
        else:
            pruned.graph.initializer.append(tensor)
    del pruned.graph.value_info[:]  # the analysis's inferred shapes: stale once sizes change
    if not removed_indices:
        return pruned
    store = ConstantStore(pruned)
    initializers = {t.name for t in model.graph.initializer}
    for name in cuts.keys() - initializers:  # weights held by Constant nodes
        store.set(name, _cut(store.get(name), cuts[name]))

    def size(space: Space) -> int:
        return dep.graph.nodes[space]["size"] - len(removed_indices.get(space, ()))

    def kept(space: Space) -> np.ndarray:
        every = np.arange(dep.graph.nodes[space]["size"])
        return np.setdiff1d(every, removed_indices.get(space, ()))

    for fix in _fixes(dep, removals):
        fix.apply(pruned, store, size, kept)
    remove_unused(pruned)
    resize_declared_weights(pruned, {v.name for v in model.graph.input} & initializers)
    return pruned


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


def _cuts(
    dep: DepGraph, removed: dict[Space, np.ndarray]
) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Per constant tensor, the (axis, indices) to delete."""
    cuts: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for space, indices in removed.items():
        if dep.index.is_constant(space.tensor) and len(indices):
            cuts[space.tensor].append((space.axis, indices))
    return cuts


def _cut(value: np.ndarray, cuts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    for axis, indices in cuts:  # cuts on different axes commute
        keep = np.ones(value.shape[axis], dtype=bool)
        keep[indices] = False
        value = np.compress(keep, value, axis=axis)
    return value
