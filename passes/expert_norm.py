"""Expert weight-norm criterion (baseline): remove the experts with the smallest weights.

    score(e) = sum over every slice removing e deletes of sum w^2

i.e. the squared L2 norm of the expert's MLP weights (its own constants in per-expert graphs,
its [e] slices of stacked or fused [E, ...] weights) plus its router row. Each prunable layer
loses floor(ratio * E) experts (never going below top-k). The magnitude criterion of
structured pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017) applied to
whole experts; data-free, and blind to how often the router uses an expert.
"""

from __future__ import annotations

import numpy as np

from graphprune.moe import (
    ExpertContext,
    ExpertCriterion,
    MoELayer,
    register_criterion,
    select_lowest,
)


def expert_sq_norms(layer: MoELayer, constants) -> np.ndarray:
    """Squared L2 norm of everything each expert owns."""
    norms = np.zeros(layer.n_experts)
    for space in layer.constants:
        value = np.asarray(constants[space.tensor], dtype=np.float64)
        norms += np.square(np.moveaxis(value, space.axis, 0)).reshape(layer.n_experts, -1).sum(1)
    for expert in layer.experts:
        for name in expert.weights:
            value = np.asarray(constants[name], dtype=np.float64)
            norms[expert.index] += float(np.square(value).sum())
    return norms


@register_criterion
class ExpertNorm(ExpertCriterion):
    name = "l2"

    def select(self, layers: list[MoELayer], context: ExpertContext, ratio: float):
        scores = {layer.name: expert_sq_norms(layer, context.constants) for layer in layers}
        return select_lowest(layers, scores, ratio)
