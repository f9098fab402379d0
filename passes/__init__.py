"""Importance and rewriting passes, one per file; installed as `graphprune.passes`.

Importing this package registers every importance pass in `IMPORTANCE`.
"""

from graphprune.passes import magnitude, random_importance  # noqa: F401  (registration)
from graphprune.passes.base import IMPORTANCE, ImportancePass, ScoreContext, importance

__all__ = ["IMPORTANCE", "ImportancePass", "ScoreContext", "importance"]
