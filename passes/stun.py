"""STUN expert pruning: cluster behaviourally similar experts, keep one per cluster.

STUN: Structured-Then-Unstructured Pruning for Scalable MoE Pruning (Lee et al., ACL 2025,
arXiv 2409.06211), stage 1 (expert pruning with O(1) forward passes). Experts whose router
rows are close are chosen by the same tokens and are redundant with each other:

    d(i, j) = ||G_i - G_j||_2 / mean_{p != q} ||G_p - G_q||_2  -  lambda * c(i, j)

G_e is the router's row for expert e (data-free); c(i, j) in [0, 1] is the co-selection rate
(tokens with both i and j in their top-k, divided by the tokens with either, from calibration)
and lambda >= 0 its weight (0: no data needed). Experts the router picks together answer the
same tokens, so co-selection makes them closer. The router term is scaled by its layer mean so
that one threshold means the same in every layer.

1. Per layer, greedy agglomerative clustering with average linkage: repeatedly merge the two
   closest clusters; the merge heights are non-decreasing (average linkage is reducible), so
   "merge while the distance is <= tau" is a prefix of this sequence. A layer never goes below
   top-k clusters.
2. One global threshold tau, bisected so that the number of merges with height <= tau across
   layers equals the expert budget floor(ratio * sum_l E_l) (ties at tau: layer order).
3. Per cluster, keep the member whose router row is closest to the cluster's mean row; the
   others are removed (the router keeps the survivors' rows; top-k then renormalizes over them).
   Optionally (`average_below` > 0), layers left with fewer experts than that replace each
   kept expert's weights by its cluster's mean (merging rather than dropping).
"""

from __future__ import annotations

import math

import numpy as np

from graphprune.moe import (
    ExpertContext,
    ExpertCriterion,
    ExpertSelection,
    MoELayer,
    register_criterion,
    router_rows,
)

BISECTION_STEPS = 100


def distances(rows: np.ndarray, coselection: np.ndarray | None, weight: float) -> np.ndarray:
    """d(i, j) of the module docstring; `coselection` is c (or None when weight is 0)."""
    d = np.linalg.norm(rows[:, None, :] - rows[None, :, :], axis=-1)
    off_diagonal = ~np.eye(len(rows), dtype=bool)
    mean = d[off_diagonal].mean() if off_diagonal.any() else 0.0
    d = d / mean if mean > 0 else d
    if coselection is not None and weight:
        d = d - weight * coselection
    return d


def coselection_rate(counts: np.ndarray, coactivation: np.ndarray) -> np.ndarray:
    """c(i, j) = co-selections / (tokens choosing i or j), 0 where neither was chosen."""
    either = counts[:, None] + counts[None, :] - coactivation
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(either > 0, coactivation / either, 0.0)
    np.fill_diagonal(rate, 1.0)
    return rate


def agglomerate(d: np.ndarray, min_clusters: int) -> list[tuple[float, int, int]]:
    """Average-linkage merges (height, a, b) of clusters named by their lowest member, until
    `min_clusters` remain. Ties: the pair with the lowest (a, b)."""
    members = {i: [i] for i in range(len(d))}
    merges = []
    while len(members) > min_clusters:
        names = sorted(members)
        best = None
        for x, a in enumerate(names):
            for b in names[x + 1 :]:
                height = float(d[np.ix_(members[a], members[b])].mean())
                if best is None or height < best[0]:
                    best = (height, a, b)
        height, a, b = best
        members[a] = members[a] + members.pop(b)
        merges.append((height, a, b))
    return merges


def clusters_after(n: int, merges: list[tuple[float, int, int]]) -> list[list[int]]:
    members = {i: [i] for i in range(n)}
    for _, a, b in merges:
        members[a] = members[a] + members.pop(b)
    return [sorted(m) for _, m in sorted(members.items())]


def threshold_prefixes(dendrograms: list[list[tuple[float, int, int]]], budget: int) -> list[int]:
    """How many leading merges of each layer fall under the bisected threshold, `budget` in
    total (fewer when the dendrograms hold fewer merges)."""
    heights = [h for merges in dendrograms for h, _, _ in merges]
    budget = min(budget, len(heights))
    if budget == 0:
        return [0] * len(dendrograms)

    def under(tau: float) -> list[int]:
        return [next((i for i, m in enumerate(ms) if m[0] > tau), len(ms)) for ms in dendrograms]

    low, high = min(heights) - 1.0, max(heights)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if sum(under(middle)) >= budget:
            high = middle
        else:
            low = middle
    prefixes, below = under(high), under(low)
    extra = sum(prefixes) - budget  # merges tied at the threshold: drop the last layers' ones
    for layer in reversed(range(len(prefixes))):
        take = min(extra, prefixes[layer] - below[layer])
        prefixes[layer] -= take
        extra -= take
    return prefixes


def representative(rows: np.ndarray, cluster: list[int]) -> int:
    """The member whose router row is closest to the cluster's mean row (ties: lower index)."""
    mean = rows[cluster].mean(axis=0)
    return cluster[int(np.argmin([np.linalg.norm(rows[e] - mean) for e in cluster]))]


@register_criterion
class Stun(ExpertCriterion):
    """Options: `stun_lambda` (weight of co-selection, default 0: data-free)."""

    name = "stun"

    def select(self, layers: list[MoELayer], context: ExpertContext, ratio: float):
        weight = float(context.options.get("stun_lambda", 0.0))
        prunable = [layer for layer in layers if layer.prunable]
        rows, dendrograms = {}, []
        for layer in prunable:
            rows[layer.name] = router_rows(layer, context.constants)
            coselection = None
            if weight:
                if context.stats is None:
                    raise ValueError("stun_lambda > 0 needs router statistics (calibration)")
                stats = context.stats[layer.name]
                coselection = coselection_rate(stats.counts, stats.coactivation)
            d = distances(rows[layer.name], coselection, weight)
            dendrograms.append(agglomerate(d, max(layer.top_k, 1)))
        budget = math.floor(ratio * sum(layer.n_experts for layer in prunable) + 1e-9)
        selection = ExpertSelection({})
        for layer, merges, prefix in zip(
            prunable, dendrograms, threshold_prefixes(dendrograms, budget), strict=True
        ):
            clusters = clusters_after(layer.n_experts, merges[:prefix])
            kept_clusters = []
            for cluster in clusters:
                keep = representative(rows[layer.name], cluster)
                kept_clusters.append([keep] + [e for e in cluster if e != keep])
            removed = sorted(e for c in kept_clusters for e in c[1:])
            selection.removed[layer.name] = np.array(removed, dtype=np.int64)
            selection.clusters[layer.name] = kept_clusters
        return selection
