"""Group magnitude importance (L1, L2).

A unit's score is the magnitude of everything its removal deletes, summed over every scored
slice of the group (the producing rows, biases and norm affine parameters, and the reading
columns of the next layers):

    L1(u) = sum_{slices s} sum_{i in s(u)} |w_i|        L2(u) = sum_{slices s} sum_{i in s(u)} w_i^2

This is the group criterion of DepGraph / Torch-Pruning (Fang et al., CVPR 2023) with sum
reduction; BatchNorm running statistics are followed but not scored.
"""

from __future__ import annotations

import numpy as np
from graphprune.passes.base import ImportancePass, ScoreContext, register, unit_sums

from graphprune.depgraph import Group


@register
class L1Importance(ImportancePass):
    name = "l1"

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        return unit_sums(
            group, context.constants, lambda w, axes: np.abs(w).sum(axis=axes, dtype=np.float64)
        )


@register
class L2Importance(ImportancePass):
    name = "l2"

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        return unit_sums(group, context.constants, _sum_of_squares)


def _sum_of_squares(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """sum w^2 over `axes` as a contraction: no squared temporary, float64 result."""
    letters = "abcdefghijklmnopqrstuvwxyz"[: w.ndim]
    kept = "".join(c for a, c in enumerate(letters) if a not in axes)
    return np.einsum(f"{letters},{letters}->{kept}", w, w).astype(np.float64)
