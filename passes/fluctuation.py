"""Fluctuation importance: FLAP's weighted input feature variance (WIFV).

An, Zhao, Yu, Tang, Wang, "Fluctuation-based Adaptive Structured Pruning for Large Language
Models", AAAI 2024. For a consumer layer y = x @ W2 (W2: [input columns, outputs], see
`graphprune.calibrate.Consumer.matrix`), input column j scores how much the layer's output
would fluctuate if the column were replaced by its mean:

    WIFV_j = var(x_j) * ||W2[j, :]||^2          (var over every calibration row)

A unit's score sums WIFV over every input column it owns, in every consumer of the group: a
conv channel owns its k*k patch columns, an attention head its head_dim columns of the output
projection, an MLP channel its column of the down projection. A removed unit's columns are then
best replaced by their means, which is FLAP's bias compensation (passes/bias_compensation.py,
the criterion's own compensation). FLAP's adaptive structure search (standardize each layer's
and module's scores, one global threshold weighted by the parameters each unit removes) is
`--allocation adaptive` (graphprune/allocate.py).

A group with no linear consumer (a MatMul, Gemm or group-1 Conv reading its channels) has no
WIFV; it is scored by L2 magnitude instead.
"""

from __future__ import annotations

import numpy as np
from graphprune.passes.base import ImportancePass, ScoreContext, importance, register

from graphprune.calibrate import CalibrationStats, Consumer, InputStats, unit_column_sums
from graphprune.depgraph import Group


@register
class FluctuationImportance(ImportancePass):
    name = "fluctuation"
    needs_data = True

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        stats: CalibrationStats | None = context.stats
        if stats is None or not stats.consumers(group.id):
            return importance("l2").score(group, context)

        def wifv(consumer: Consumer, inputs: InputStats) -> np.ndarray:
            weight = consumer.matrix(np.asarray(context.constants[consumer.weight]))
            return inputs.var * np.einsum("jo,jo->j", weight, weight, dtype=np.float64)

        return unit_column_sums(group, stats, wifv)
