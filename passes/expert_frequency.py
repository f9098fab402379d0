"""Router-frequency criterion (baseline): remove the experts the router chooses least.

    score(e) = |{ tokens t : e in top-k(router logits of t) }|

counted on calibration tokens (the same top-k the layer computes: softmax is monotone, so the
top-k of the logits is the top-k of the probabilities). Each prunable layer loses
floor(ratio * E) experts, never going below top-k. The frequency heuristic of expert pruning
(e.g. Muzio et al., "SEER-MoE", 2024; Lu et al., "Not All Experts are Equal", ACL 2024, use
it as a baseline). Needs data: experts unused on the calibration text score 0.
"""

from __future__ import annotations

from graphprune.moe import (
    ExpertContext,
    ExpertCriterion,
    MoELayer,
    register_criterion,
    select_lowest,
)


@register_criterion
class ExpertFrequency(ExpertCriterion):
    name = "frequency"
    needs_data = True

    def select(self, layers: list[MoELayer], context: ExpertContext, ratio: float):
        if context.stats is None:
            raise ValueError("the frequency criterion needs router statistics (calibration)")
        scores = {
            layer.name: context.stats[layer.name].counts.astype(float)
            for layer in layers
            if layer.prunable
        }
        return select_lowest(layers, scores, ratio)
