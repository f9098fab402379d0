"""Rewriting pass: remove experts from mixture-of-experts layers, physically.

For a layer with E experts losing the set R (|R| = r, E - r >= top_k), with the analysis of
`graphprune.moe`:

- every constant on the expert axis is cut at R (np.delete on that axis): the router weight's
  columns (so the router emits E - r logits and softmax/top-k run over the survivors), its bias
  entries, stacked [E, ...] expert weights, a fused MoE op's [E, ...] inputs;
- the size constants on the expert axis (Reshape/Expand targets, OneHot depth) become E - r;
- per-expert branches: the merge that adds a removed expert's output to the running sum is
  bypassed (its output is replaced by its accumulator input), so the branch and its weights
  become dead and are deleted; each kept expert's selector constant is renumbered to its rank
  among the kept experts (expert ids are positions on the shrunk router axis).

Equivalence: in the original graph, a router logit of -inf for each e in R gives
softmax_e = 0, top-k never picks e (E - r >= k finite logits remain, and ties keep their index
order after renumbering), every masked branch adds exactly zero, and every reduction over the
expert axis (softmax sum, top-k mask, dense gate sum) sees zeros or -inf where the pruned graph
sees nothing. `graphprune.moe_prune.masked_model` builds that graph; the oracle compares them.

No node is added or moved before cleanup, so node positions from the analysis stay valid while
the fixes apply; dead nodes and constants are then deleted in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.edit import ConstantStore, copy_structure, remove_unused
from graphprune.errors import BadInput
from graphprune.moe import MoELayer
from graphprune.ops import Space


def check_removals(layers: Sequence[MoELayer], removals: Mapping[str, np.ndarray]) -> None:
    """Refuse, with one line, removals that name no layer, a blocked layer, an expert that does
    not exist, or that leave fewer experts than the layer's top-k."""
    by_name = {layer.name: layer for layer in layers}
    for name, removed in removals.items():
        layer = by_name.get(name)
        if layer is None:
            raise BadInput(f"no mixture-of-experts layer named '{name}'")
        removed = np.unique(np.asarray(removed, dtype=np.int64))
        if not len(removed):
            continue
        if not layer.prunable:
            raise BadInput(f"experts of {name} cannot be removed: {layer.blocked[0]}")
        if removed.min() < 0 or removed.max() >= layer.n_experts:
            raise BadInput(
                f"{name} has experts 0..{layer.n_experts - 1}, asked to remove {removed}"
            )
        left = layer.n_experts - len(removed)
        if left < layer.top_k:
            raise BadInput(
                f"{name}: removing {len(removed)} of {layer.n_experts} experts leaves {left}, "
                f"fewer than its top-k ({layer.top_k})"
            )


def remove_experts(
    model: onnx.ModelProto, layers: Sequence[MoELayer], removals: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy of `model` (the model the layers were found in) without the removed experts;
    `removals` maps a layer name to the expert indices it loses."""
    check_removals(layers, removals)
    active = [
        (layer, np.unique(np.asarray(removals[layer.name], dtype=np.int64)))
        for layer in layers
        if len(removals.get(layer.name, ()))
    ]
    cuts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for layer, removed in active:
        for space in layer.constants:
            cuts.setdefault(space.tensor, []).append((space.axis, removed))
    pruned = copy_structure(model)
    for tensor in model.graph.initializer:
        if tensor.name in cuts:
            value = _cut(numpy_helper.to_array(tensor), cuts[tensor.name])
            pruned.graph.initializer.append(numpy_helper.from_array(value, tensor.name))
        else:
            pruned.graph.initializer.append(tensor)
    store = ConstantStore(pruned)
    initializers = {t.name for t in model.graph.initializer}
    for name in cuts.keys() - initializers:  # weights held by Constant nodes
        store.set(name, _cut(store.get(name), cuts[name]))
    bypass: dict[str, str] = {}
    for layer, removed in active:
        _apply_fixes(pruned, store, layer, removed)
        _renumber_selectors(pruned, store, layer, removed)
        for expert in removed:
            for merge in layer.experts[int(expert)].merges:
                node = pruned.graph.node[merge.node]
                bypass[node.output[0]] = node.input[merge.accumulator]
    _rename_reads(pruned, bypass)
    del pruned.graph.value_info[:]
    remove_unused(pruned)
    return pruned


def _cut(value: np.ndarray, cuts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    for axis, indices in cuts:
        value = np.delete(value, indices, axis=axis)
    return value


def _apply_fixes(pruned, store: ConstantStore, layer: MoELayer, removed: np.ndarray) -> None:
    """Every fix of a layer encodes expert-axis sizes only (the analysis blocks the others)."""
    kept_experts = np.setdiff1d(np.arange(layer.n_experts), removed)

    def size(space: Space) -> int:
        return len(kept_experts)

    def kept(space: Space) -> np.ndarray:
        return kept_experts

    for fix in layer.fixes:
        fix.apply(pruned, store, size, kept)


def _renumber_selectors(pruned, store: ConstantStore, layer: MoELayer, removed) -> None:
    """Kept expert e is now number rank(e) among the kept; removed experts' selectors get -1,
    which no expert id equals (their branches are bypassed, so normally already dead)."""
    new_number = np.full(layer.n_experts, -1, dtype=np.int64)
    kept = np.setdiff1d(np.arange(layer.n_experts), removed)
    new_number[kept] = np.arange(len(kept))
    for expert in layer.experts:
        for selector in expert.selectors:
            node = pruned.graph.node[selector.node]
            name = store.private_copy(node, selector.input_index)
            value = store.get(name)
            store.set(name, np.full_like(value, new_number[expert.index]))


def _rename_reads(model: onnx.ModelProto, renamed: dict[str, str]) -> None:
    """Every read of a bypassed merge's output reads its accumulator instead (chains of
    bypassed merges resolve to the first surviving sum)."""

    def final(name: str) -> str:
        while name in renamed:
            name = renamed[name]
        return name

    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = final(name)
