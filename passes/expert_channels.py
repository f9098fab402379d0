"""Rewriting pass: prune each expert's intermediate channels independently in stacked weights.

In a stacked [E, ...] MoE (dense dispatch, fused com.microsoft::MoE, HF batched experts) the
channel graph couples channel i of every expert (one index of one axis). Experts are separate
MLPs, though: expert e may keep its own set S_e of channels, provided every expert keeps the
same number (the tensor stays dense). For every constant slice of the channel group, with
expert axis a_E and channel axis a_C:

    W'[e] = W[e] restricted to the indices of S_e on a_C        (np.delete per expert, re-stacked)

Activations shrink by themselves (each expert's MatMul reads its own slice), and the group's
size constants (Reshape targets) become |S_e|. Equivalence (zero-then-prune, per expert): the
original with each expert's removed channels zeroed in the slices that *read* them (role `in`,
e.g. fc2[e, :, i]) computes exactly the pruned model. Scores: the L2 criterion per expert,
sum over the group's scored slices of w^2 (Li et al., ICLR 2017), each expert ranked alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from graphprune.depgraph import Group
from graphprune.edit import ConstantStore, copy_structure, remove_unused
from graphprune.errors import BadInput
from graphprune.moe import MoELayer
from graphprune.ops import Role, ShapeEntryFix, Space


def expert_axes(group: Group, layer: MoELayer, constants) -> dict[Space, int]:
    """For each constant space of `group`, the expert axis of its tensor; BadInput when one
    has none (a slice shared by every expert cannot lose different channels per expert)."""
    by_tensor = {s.tensor: s.axis for s in layer.constants}
    axes = {}
    for space in group.sizes:
        if space.tensor not in constants:
            continue
        if space.tensor not in by_tensor:
            raise BadInput(f"{space} is shared by every expert of {layer.name}")
        axes[space] = by_tensor[space.tensor]
    bad = [f for f in group.fixes if not isinstance(f, ShapeEntryFix)]
    if bad:
        raise BadInput(f"per-expert channels cannot rewrite {type(bad[0]).__name__}")
    return axes


def per_expert_scores(group: Group, layer: MoELayer, constants) -> np.ndarray:
    """[E, units]: sum of w^2 over the group's scored slices, per expert and unit."""
    scores = np.zeros((layer.n_experts, group.n_units))
    for space, expert_axis in expert_axes(group, layer, constants).items():
        if group.roles.get(space) not in (Role.IN, Role.OUT):
            continue
        value = np.moveaxis(np.asarray(constants[space.tensor], dtype=np.float64), expert_axis, 0)
        channel_axis = space.axis - (space.axis > expert_axis) + 1
        value = np.moveaxis(value, channel_axis, 1).reshape(
            layer.n_experts, value.shape[channel_axis], -1
        )
        per_index = np.square(value).sum(axis=2)  # [E, indices]
        for e in range(layer.n_experts):
            scores[e] += np.bincount(group.labels[space], per_index[e], minlength=group.n_units)
    return scores


def lowest_per_expert(scores: np.ndarray, ratio: float) -> np.ndarray:
    """[E, r]: each expert's floor(ratio * units) lowest units (ties: lower index), r < units."""
    count = min(int(np.floor(ratio * scores.shape[1] + 1e-9)), scores.shape[1] - 1)
    return np.array([np.sort(np.lexsort((np.arange(len(s)), s))[:count]) for s in scores])


def _per_expert(value: np.ndarray, expert_axis: int, edit) -> np.ndarray:
    moved = np.moveaxis(value, expert_axis, 0)
    return np.moveaxis(np.stack([edit(e, moved[e]) for e in range(len(moved))]), 0, expert_axis)


def _indices(group: Group, space: Space, units: np.ndarray) -> np.ndarray:
    return group.indices(space, np.asarray(units))


Job = tuple[Group, MoELayer, np.ndarray]  # a group, its layer, removed units [E, r]


def prune_expert_channels(
    model: onnx.ModelProto, jobs: list[Job], constants: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy of `model` where, for each (group, layer, removed) job, expert e lost units
    `removed[e]` of the group (equal counts per expert)."""
    pruned = copy_structure(model)
    pruned.graph.initializer.extend(model.graph.initializer)
    store = ConstantStore(pruned)
    for group, layer, removed in jobs:
        for space, expert_axis in expert_axes(group, layer, constants).items():
            axis = space.axis - (space.axis > expert_axis)

            def cut(e, block, group=group, space=space, axis=axis, removed=removed):
                return np.delete(block, _indices(group, space, removed[e]), axis=axis)

            store.set(space.tensor, _per_expert(store.get(space.tensor), expert_axis, cut))
        kept = group.n_units - removed.shape[1]
        for fix in group.fixes:
            fix.apply(pruned, store, lambda space, g=group, k=kept: _kept_size(g, space, k), None)
    del pruned.graph.value_info[:]
    remove_unused(pruned)
    return pruned


def _kept_size(group: Group, space: Space, kept_units: int) -> int:
    """Indices of `space` left when every expert keeps `kept_units` units (one index each)."""
    per_unit = len(group.labels[space]) // group.n_units
    return kept_units * per_unit


def zero_expert_channels(
    model: onnx.ModelProto, jobs: list[Job], constants: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """The oracle's reference: a copy of `model` with each expert's removed units zeroed in the
    slices that read them (role in)."""
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    del masked.graph.value_info[:]
    store = ConstantStore(masked)
    for group, layer, removed in jobs:
        for space, expert_axis in expert_axes(group, layer, constants).items():
            if group.roles.get(space) != Role.IN:
                continue
            axis = space.axis - (space.axis > expert_axis)

            def zero(e, block, group=group, space=space, axis=axis, removed=removed):
                block = block.copy()
                np.moveaxis(block, axis, 0)[_indices(group, space, removed[e])] = 0
                return block

            store.set(space.tensor, _per_expert(store.get(space.tensor), expert_axis, zero))
    return masked
