"""Importance and rewriting passes, one per file; installed as `graphprune.passes`.

Importing this package registers every importance pass in `IMPORTANCE` and every compensation
pass in `COMPENSATION`. The second-order passes (OBSPA, condition number, mask tuning,
least-squares reconstruction) are imported when their files are present, so the package works
while they are being written; an error inside one of them is not hidden.
"""

import importlib
import importlib.util

from graphprune.passes import (  # noqa: F401  (registration)
    bias_compensation,
    expert_frequency,
    expert_norm,
    fluctuation,
    magnitude,
    random_importance,
    stun,
    wanda,
)
from graphprune.passes.base import (
    COMPENSATION,
    IMPORTANCE,
    CompensationPass,
    ImportancePass,
    ScoreContext,
    Update,
    compensation,
    importance,
)

for _name in ("obspa", "condition", "mask_tuning", "reconstruct", "remove_blocks"):
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "COMPENSATION",
    "IMPORTANCE",
    "CompensationPass",
    "ImportancePass",
    "ScoreContext",
    "Update",
    "compensation",
    "importance",
]
