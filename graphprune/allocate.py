"""Allocate: turn per-unit scores and a ratio into the units each group loses.

uniform: every prunable group loses floor(ratio * n) of its n units.
global:  scores are divided by their group's mean (so groups are comparable), all units are
         ranked together and the lowest floor(ratio * total) go, no group losing more than
         `max_group_ratio` of its units.
adaptive: FLAP's adaptive structure search (AL-AM; An et al., AAAI 2024): each group's scores
         are standardized (zero mean, unit standard deviation over its units: every layer and
         module on one scale, attention heads and MLP channels alike), all units are ranked
         together, and the lowest go until the parameters they remove reach `ratio` of the
         parameters the groups in scope hold (each unit weighted by its `costs`, the parameters
         its removal deletes; see `unit_params`). A group keeps at least one unit.
Then, per group, the kept count is rounded up to a multiple of `round_to` and never drops below
one unit: a group is never emptied. Within a group the lowest-scoring units go (ties: lower
index first), except that every space keeps at least one index: a concat input or a split
output is never emptied either (its best unit is spared). Groups whose sizes share one shape
entry (see `tied_groups`) all lose the fewest units any of them was given.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from graphprune.depgraph import Group
from graphprune.ops import ShapeEntryFix

ALLOCATIONS = ("uniform", "global", "adaptive")
# scope names (the CLI's --scope) -> group kinds. "hidden" (the residual stream, through its
# normalizations) is not exact under the oracle, so it is never a default: opt in by name.
SCOPES = {
    "channels": ("channel",),
    "mlp": ("channel",),
    "heads": ("head", "kv-group"),
    "hidden": ("hidden",),
}
DEFAULT_SCOPES = ("channels", "heads")


def in_scope(groups: list[Group], scopes: tuple[str, ...]) -> list[Group]:
    """The groups whose kind one of `scopes` covers."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    kinds = {kind for scope in scopes for kind in SCOPES[scope]}
    return [g for g in groups if g.kind in kinds]


def allocate(
    groups: list[Group],
    scores: Mapping[str, np.ndarray],
    ratio: float,
    mode: str = "uniform",
    round_to: int = 1,
    max_group_ratio: float = 0.9,
    costs: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Units to remove, per prunable group id (groups that lose nothing are left out).
    `costs` (adaptive only): parameters each unit removes, per group (default: 1 per unit)."""
    prunable = [g for g in groups if g.prunable and g.id in scores]
    if mode == "uniform":
        counts = {g.id: math.floor(ratio * g.n_units + 1e-9) for g in prunable}
    elif mode == "global":
        counts = _global_counts(prunable, scores, ratio, max_group_ratio)
    elif mode == "adaptive":
        counts = _adaptive_counts(prunable, scores, ratio, costs or {})
    else:
        raise ValueError(f"unknown allocation '{mode}' (known: {', '.join(ALLOCATIONS)})")
    for tie in tied_groups(prunable):
        fewest = min(counts[group_id] for group_id in tie)
        counts.update({group_id: fewest for group_id in tie})
    removals = {}
    for group in prunable:
        remove = _rounded_removal(group.n_units, counts[group.id], round_to)
        if remove:
            order = np.lexsort((np.arange(group.n_units), scores[group.id]))
            removed = spare_every_space(group, order[:remove], scores[group.id])
            if len(removed):
                removals[group.id] = removed
    return removals


def tied_groups(groups: list[Group]) -> list[set[str]]:
    """Sets of groups whose new sizes are written into the same shape entry, so they must lose
    the same number of units. Dynamo shares one run-time shape vector (a Concat of the batch,
    the sequence and literal sizes) between the attention layers; its literal head count is then
    one entry for every layer, and layers losing different head counts cannot all be right."""
    owners: dict[tuple[int, int, int], set[str]] = defaultdict(set)
    for group in groups:
        for fix in group.fixes:
            if isinstance(fix, ShapeEntryFix):
                owners[fix.node, fix.input_index, fix.entry].add(group.id)
    parent = {group.id: group.id for group in groups}

    def root(group_id: str) -> str:
        while parent[group_id] != group_id:
            group_id = parent[group_id]
        return group_id

    for shared in owners.values():
        first, *others = sorted(shared)
        for other in others:
            parent[root(other)] = root(first)
    sets: dict[str, set[str]] = defaultdict(set)
    for group_id in parent:
        sets[root(group_id)].add(group_id)
    return [tie for tie in sets.values() if len(tie) > 1]


def spare_every_space(group: Group, removed: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`removed` minus, for each space it would empty, that space's best-scoring unit."""
    removed = set(int(u) for u in removed)
    for labels in group.labels.values():
        units = np.unique(labels)
        if all(int(u) in removed for u in units):
            removed.discard(int(units[np.argmax(scores[units])]))
    return np.array(sorted(removed), dtype=np.int64)


def _rounded_removal(n_units: int, remove: int, round_to: int) -> int:
    kept = n_units - remove
    kept = min(n_units, max(1, math.ceil(kept / round_to) * round_to))
    return n_units - kept


def _global_counts(
    groups: list[Group], scores: Mapping[str, np.ndarray], ratio: float, max_group_ratio: float
) -> dict[str, int]:
    normalized, owners = [], []
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = s.mean()
        normalized.append(s / mean if mean > 0 else np.zeros_like(s))
        owners.append(np.full(g.n_units, len(owners)))
    if not groups:
        return {}
    flat, owner = np.concatenate(normalized), np.concatenate(owners)
    target = math.floor(ratio * len(flat) + 1e-9)
    caps = [math.floor(max_group_ratio * g.n_units) for g in groups]
    counts = [0] * len(groups)
    taken = 0
    for k in np.argsort(flat, kind="stable"):
        if taken == target:
            break
        if counts[owner[k]] < caps[owner[k]]:
            counts[owner[k]] += 1
            taken += 1
    return {g.id: counts[i] for i, g in enumerate(groups)}


def _adaptive_counts(
    groups: list[Group],
    scores: Mapping[str, np.ndarray],
    ratio: float,
    costs: Mapping[str, np.ndarray],
) -> dict[str, int]:
    """FLAP's AL-AM: standardized scores, one global threshold, a parameter budget."""
    if not groups:
        return {}
    standardized, weights, owners = [], [], []
    for number, group in enumerate(groups):
        standardized.append(standardize(scores[group.id]))
        weights.append(np.asarray(costs.get(group.id, np.ones(group.n_units)), dtype=np.float64))
        owners.append(np.full(group.n_units, number))
    flat, weight, owner = (np.concatenate(a) for a in (standardized, weights, owners))
    budget = ratio * weight.sum()
    counts = [0] * len(groups)
    removed = 0.0
    for k in np.argsort(flat, kind="stable"):
        if removed + weight[k] > budget * (1 + 1e-9):
            break  # the threshold: every unit scoring lower is gone, none above
        if counts[owner[k]] < groups[owner[k]].n_units - 1:
            counts[owner[k]] += 1
            removed += weight[k]
    return {g.id: counts[i] for i, g in enumerate(groups)}


def standardize(scores: np.ndarray) -> np.ndarray:
    """(s - mean) / std over one group's units (zeros when they are all equal)."""
    values = np.asarray(scores, dtype=np.float64)
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def unit_params(group: Group, shapes: Mapping[str, tuple]) -> np.ndarray:
    """Parameters each unit's removal deletes: over every constant slice of the group (weights,
    biases, norm parameters and running statistics), the elements of the unit's indices."""
    totals = np.zeros(group.n_units)
    for space in group.roles:
        shape = shapes[space.tensor]
        per_index = math.prod(shape) // max(shape[space.axis], 1)
        totals += np.bincount(group.labels[space], minlength=group.n_units) * per_index
    return totals
