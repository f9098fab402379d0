"""Allocate: turn per-unit scores and a ratio into the units each group loses.

uniform: every prunable group loses floor(ratio * n) of its n units.
global:  scores are divided by their group's mean (so groups are comparable), all units are
         ranked together and the lowest floor(ratio * total) go, no group losing more than
         `max_group_ratio` of its units.
Then, per group, the kept count is rounded up to a multiple of `round_to` and never drops below
one unit: a group is never emptied. Within a group the lowest-scoring units go (ties: lower
index first), except that every space keeps at least one index: a concat input or a split
output is never emptied either (its best unit is spared).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from graphprune.depgraph import Group

ALLOCATIONS = ("uniform", "global")
# scope names (the CLI's --scope) -> group kinds; every scope here is exact under the oracle
SCOPES = {"channels": ("channel",), "mlp": ("channel",), "heads": ("head", "kv-group")}
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
) -> dict[str, np.ndarray]:
    """Units to remove, per prunable group id (groups that lose nothing are left out)."""
    prunable = [g for g in groups if g.prunable and g.id in scores]
    if mode == "uniform":
        counts = {g.id: math.floor(ratio * g.n_units + 1e-9) for g in prunable}
    elif mode == "global":
        counts = _global_counts(prunable, scores, ratio, max_group_ratio)
    else:
        raise ValueError(f"unknown allocation '{mode}' (known: {', '.join(ALLOCATIONS)})")
    removals = {}
    for group in prunable:
        remove = _rounded_removal(group.n_units, counts[group.id], round_to)
        if remove:
            order = np.lexsort((np.arange(group.n_units), scores[group.id]))
            removed = spare_every_space(group, order[:remove], scores[group.id])
            if len(removed):
                removals[group.id] = removed
    return removals


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
