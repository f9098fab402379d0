"""Random importance: a uniform draw per unit, seeded by the run's seed and the group's id, so
the same model, seed and group always give the same scores. The baseline every criterion must
beat."""

from __future__ import annotations

import zlib

import numpy as np
from graphprune.passes.base import ImportancePass, ScoreContext, register

from graphprune.depgraph import Group


@register
class RandomImportance(ImportancePass):
    name = "random"

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        rng = np.random.default_rng([context.seed, zlib.crc32(group.id.encode())])
        return rng.random(group.n_units)
