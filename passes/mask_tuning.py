"""Mask tuning: least-squares rescaling of each kept input channel of a consumer.

The follow-up stage of COMP (2025) after condition-number pruning: instead of re-fitting whole
weight rows, learn one scale m_c per kept input channel c so the pruned layer's output matches
the dense one on calibration data. The closed form below is derived here from the Gram matrix.

For a consumer y = x W (W as [input columns, outputs]), kept columns K and P the [K, channels]
indicator of which kept channel owns each kept column (k*k columns per conv channel, one
otherwise), the scaled layer is X_K diag(P m) W_K. Its error against the dense output is

    f(m) = ||X W - X_K diag(P m) W_K||^2
         = tr(W^T G W) - 2 m^T b + m^T A m,   with G = X^T X and
    A = P^T (G_KK o (W_K W_K^T)) P            (o: elementwise product; PSD by Schur's theorem)
    b = P^T rowsum((G_{K,:} W) o W_K)          (b_j = <(G W)_j, W_j> summed over j's columns)

All of it comes from G and W, no pass over the data. We minimize f(m) + mu ||m - 1||^2 with
mu = lambda * mean(diag A) (option "damp", default 0.01):

    (A + mu I) m = b + mu 1.

The damping pulls toward m = 1 (no change), so f(m*) + mu||m* - 1||^2 <= f(1): tuning never makes
the calibration error worse than no compensation. The removed rows are set to zero (the rewrite
slices them away).
"""

from __future__ import annotations

import numpy as np
from graphprune.passes.base import CompensationPass, ScoreContext, Update, register_compensation
from graphprune.passes.obspa import damp_option, gram_of

from graphprune.calibrate import CalibrationStats, losing_consumers
from graphprune.depgraph import Group


def tuned_scales(
    weight: np.ndarray, gram: np.ndarray, kept: np.ndarray, channel_of: np.ndarray, damp: float
) -> np.ndarray:
    """m solving (A + mu I) m = b + mu 1 for the kept columns `kept`, whose channels (0..C-1)
    are `channel_of`; one scale per channel."""
    kept_weight = weight[kept]
    products = gram[kept] @ weight  # (G W)_K, [kept, outputs]
    per_column_b = np.einsum("ko,ko->k", products, kept_weight)
    per_column_a = gram[np.ix_(kept, kept)] * (kept_weight @ kept_weight.T)
    n_channels = int(channel_of.max()) + 1
    owner = np.zeros((len(kept), n_channels))
    owner[np.arange(len(kept)), channel_of] = 1.0
    a = owner.T @ per_column_a @ owner
    b = owner.T @ per_column_b
    scale = float(np.mean(np.diag(a)))
    mu = damp * (scale if scale > 0 else 1.0)
    return np.linalg.solve(a + mu * np.eye(n_channels), b + mu)


def mask_tuned(
    weight: np.ndarray, gram: np.ndarray, removed_columns: np.ndarray, kernel: int, damp: float
) -> np.ndarray:
    """The weight with its kept rows rescaled per channel and its removed rows zero."""
    kept = np.setdiff1d(np.arange(len(weight)), removed_columns)
    result = np.zeros_like(weight)
    if len(kept) == 0:
        return result
    _, channel_of = np.unique(kept // kernel, return_inverse=True)
    scales = tuned_scales(weight, gram, kept, channel_of, damp)
    result[kept] = weight[kept] * scales[channel_of][:, None]
    return result


@register_compensation
class MaskTuning(CompensationPass):
    name = "mask"
    needs_gram = True

    def compensate(self, group: Group, removed: np.ndarray, context: ScoreContext) -> Update:
        stats: CalibrationStats = context.stats
        update = Update()
        for consumer, removed_columns in losing_consumers(stats, group, removed):
            original = np.asarray(context.constants[consumer.weight])
            weight = consumer.matrix(original).astype(np.float64)
            gram = gram_of(stats, consumer)
            tuned = mask_tuned(weight, gram, removed_columns, consumer.kernel, damp_option(context))
            update.weights[consumer.weight] = consumer.from_matrix(tuned, original)
        return update
