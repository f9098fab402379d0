"""Layer-wise least-squares reconstruction of each consumer's kept weights (`--reconstruct`).

After pruning, each consumer y = x W + b (W as [input columns, outputs]) loses its removed input
columns R; its kept rows K are re-fitted so the layer reproduces its dense output on calibration
data, as in layer-wise reconstruction (OBC, Frantar & Alistarh, NeurIPS 2022; Kwon et al.,
"A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022). Each consumer
is solved on its own, so attention (o_proj reads heads) and MLP (down_proj reads MLP channels)
sub-blocks are reconstructed separately.

We fit weights AND the output offset (an affine least squares): with the centered Gram
C = X^T X - n mu mu^T (mu the column means, n the rows),

    W_K' = argmin ||(X - 1 mu^T) W - (X_K - 1 mu_K^T) W'||^2 + eps ||W' - W_K||^2
         = (C_KK + eps I)^-1 (C_{K,:} W + eps W_K),       eps = lambda * mean(diag C_KK)
    delta b = mu^T W - mu_K^T W_K'                         (the mean output is kept exactly)

(option "damp" is lambda, default 0.01). As eps -> 0 and without the offset this is the plain
W_K' = G_KK^-1 G_{K,:} W. The ridge is anchored at the kept weights rather than at zero: the
unchanged W_K is then a feasible point of the same objective, so the result never has a larger
calibration error than no compensation, even where C_KK is singular (rows < columns, dead
channels). The offset generalises FLAP's bias compensation (delta b = W_R^T mu_R, the W' = W_K
case). The removed rows are set to zero (the rewrite slices them away).

The statistics are those of the DENSE model (one calibration run before any pruning): each
consumer's input is the dense input, not the input the already-pruned earlier layers produce.
"""

from __future__ import annotations

import numpy as np
from graphprune.passes.base import CompensationPass, ScoreContext, Update, register_compensation
from graphprune.passes.obspa import damp_option, gram_of, scale_of

from graphprune.calibrate import CalibrationStats, losing_consumers
from graphprune.depgraph import Group


def reconstructed(
    weight: np.ndarray,
    gram: np.ndarray,
    mean: np.ndarray,
    count: int,
    removed_columns: np.ndarray,
    damp: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(weight with re-fitted kept rows and zero removed rows, output offset delta b)."""
    kept = np.setdiff1d(np.arange(len(weight)), removed_columns)
    result = np.zeros_like(weight)
    if len(kept) == 0:
        return result, mean @ weight
    centered = gram - count * np.outer(mean, mean)
    block = centered[np.ix_(kept, kept)]
    scale = float(np.mean(np.diag(block)))
    eps = damp * (scale if scale > 0 else 1.0)
    right = centered[kept] @ weight + eps * weight[kept]
    result[kept] = np.linalg.solve(block + eps * np.eye(len(kept)), right)
    return result, mean @ weight - mean[kept] @ result[kept]


@register_compensation
class Reconstruction(CompensationPass):
    name = "reconstruct"
    needs_gram = True

    def compensate(self, group: Group, removed: np.ndarray, context: ScoreContext) -> Update:
        stats: CalibrationStats = context.stats
        update = Update()
        for consumer, removed_columns in losing_consumers(stats, group, removed):
            original = np.asarray(context.constants[consumer.weight])
            weight = consumer.matrix(original).astype(np.float64)
            inputs = stats.of(consumer)
            refit, offset = reconstructed(
                weight,
                gram_of(stats, consumer),
                inputs.mean,
                inputs.count,
                removed_columns,
                damp_option(context),
            )
            update.weights[consumer.weight] = consumer.from_matrix(refit, original)
            update.bias_deltas[consumer.node] = scale_of(consumer) * offset  # Gemm alpha
        return update
