"""Wanda-sp importance: weight magnitude times input activation norm, per structure.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models"
(Wanda, ICLR 2024) scores a weight by |W_ij| * ||x_j||_2; its structured variant (Wanda-sp, as
compared in FLAP, An et al. AAAI 2024) sums that over the weights a structure removes. For a
consumer layer y = x @ W2 (W2: [input columns, outputs]) a unit's score is

    s(u) = sum_{consumers} sum_{columns j of u} ||x_j||_2 * sum_i |W2[j, i]|

with ||x_j||_2 = sqrt(sum over calibration rows of x_j^2). A group with no linear consumer is
scored by L1 magnitude instead.
"""

from __future__ import annotations

import numpy as np
from graphprune.passes.base import ImportancePass, ScoreContext, importance, register

from graphprune.calibrate import CalibrationStats, Consumer, InputStats, unit_column_sums
from graphprune.depgraph import Group


@register
class WandaImportance(ImportancePass):
    name = "wanda"
    needs_data = True

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        stats: CalibrationStats | None = context.stats
        if stats is None or not stats.consumers(group.id):
            return importance("l1").score(group, context)

        def wanda(consumer: Consumer, inputs: InputStats) -> np.ndarray:
            weight = consumer.matrix(np.asarray(context.constants[consumer.weight]))
            return np.sqrt(inputs.sumsq) * np.abs(weight).sum(axis=1, dtype=np.float64)

        return unit_column_sums(group, stats, wanda)
