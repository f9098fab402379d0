"""Condition-number importance (after COMP, 2025) and the conditioning report.

COMP (2025) ranks channels by how they condition the consumer's input Gram matrix, but its
formula is not public.
This is OUR definition, not the paper's. For a consumer y = x W (W as [input columns, outputs])
with input Gram G = X^T X, damped as in OBSPA (H = G + lambda * mean(diag G) * I, option
"damp", default 0.01):

    VIF_j = H_jj * (H^-1)_jj       variance inflation of column j: 1 when j is orthogonal to the
                                   others, large when j is nearly a combination of them (the
                                   directions that make G ill-conditioned)
    s_j   = ||W[j, :]||^2 * H_jj / VIF_j  =  ||W[j, :]||^2 / (H^-1)_jj

so a column whose signal is redundant (high VIF) or whose weights are small scores low. A unit's
score sums s_j over its columns in every consumer of its group. (s_j is OBSPA's cost for a single
column; the two criteria differ for units of several columns, heads and conv channels, where
OBSPA accounts for the columns' joint covariance and this one does not.)

`conditioning` reports kappa(G) = lambda_max / lambda_min of each consumer's undamped Gram over
all its columns (before pruning) and over the kept columns only (after).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from graphprune.passes.base import ImportancePass, ScoreContext, register
from graphprune.passes.magnitude import L2Importance
from graphprune.passes.obspa import damp_option, damped, gram_of, inverse, weight_matrix

from graphprune.calibrate import CalibrationStats, Consumer, column_units, unit_column_sums
from graphprune.depgraph import Group


def condition_scores(weight: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """s_j = ||W[j, :]||^2 * H_jj / VIF_j for every input column j."""
    diagonal = np.diag(hessian)
    vif = diagonal * np.diag(inverse(hessian))
    return np.einsum("jo,jo->j", weight, weight) * diagonal / vif


@register
class ConditionImportance(ImportancePass):
    name = "condition"
    needs_data = True
    needs_gram = True

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        stats: CalibrationStats = context.stats
        consumers = stats.consumers(group.id) if stats is not None else []
        if not consumers:  # no data about this group: magnitude, as OBSPA does
            return L2Importance().score(group, context)
        damp = damp_option(context)

        def per_column(consumer: Consumer, _inputs) -> np.ndarray:
            hessian = damped(gram_of(stats, consumer), damp)
            return condition_scores(weight_matrix(consumer, context.constants), hessian)

        return unit_column_sums(group, stats, per_column)


def kappa(gram: np.ndarray) -> float:
    """Condition number lambda_max / lambda_min of a symmetric PSD matrix (inf if singular)."""
    if gram.size == 0:
        return float("nan")
    eigenvalues = np.linalg.eigvalsh(gram)
    smallest, largest = eigenvalues[0], eigenvalues[-1]
    if smallest <= largest * np.finfo(np.float64).eps * len(gram):
        return float("inf")
    return float(largest / smallest)


@dataclass(frozen=True)
class Conditioning:
    """kappa of one consumer's input Gram, over every column and over the kept ones."""

    weight: str  # the consumer's weight, naming the layer
    before: float
    after: float


def conditioning(group: Group, removed: np.ndarray, stats: CalibrationStats) -> list[Conditioning]:
    """kappa(G) before pruning and kappa(G_KK) after, for every consumer of `group`."""
    reports = []
    for consumer in stats.consumers(group.id):
        gram = gram_of(stats, consumer)
        kept = np.flatnonzero(~np.isin(column_units(consumer, group), removed))
        after = kappa(gram[np.ix_(kept, kept)])
        reports.append(Conditioning(consumer.weight, kappa(gram), after))
    return reports
