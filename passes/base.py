"""The importance-pass interface.

A pass receives one group and a `ScoreContext` (the model's constants, and calibration
statistics for passes that declare they need data) and returns one score per unit of the
group: higher means more important, the lowest go first. New criteria subclass
`ImportancePass`, register with `@register`, and the core never changes.

What a pass declares it needs decides what the pipeline collects before scoring:
`needs_data` (calibration statistics in `ScoreContext.stats`: count, mean, M2, sum of squares
of every consumer input column) and `needs_gram` (also the Gram matrix X^T X of each consumer
input, which costs columns^2 float64 per consumer; collected only when some pass asks).
Compensation passes (`CompensationPass`, registered by name in `COMPENSATION`) declare the same
two flags.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from graphprune.depgraph import Group
from graphprune.ops import Role


@dataclass
class ScoreContext:
    constants: Mapping[str, np.ndarray]
    stats: object | None = None  # calibration statistics, for passes with needs_data
    seed: int = 0
    options: dict = field(default_factory=dict)


class ImportancePass(ABC):
    name: ClassVar[str]
    needs_data: ClassVar[bool] = False  # scores read calibration statistics (context.stats)
    needs_gram: ClassVar[bool] = False  # ... including the Gram matrix of each consumer input

    @abstractmethod
    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        """One float per unit of `group` (length `group.n_units`)."""


IMPORTANCE: dict[str, type[ImportancePass]] = {}


def register(cls: type[ImportancePass]) -> type[ImportancePass]:
    IMPORTANCE[cls.name] = cls
    return cls


def importance(name: str) -> ImportancePass:
    """The registered pass called `name`."""
    if name not in IMPORTANCE:
        raise KeyError(f"unknown criterion '{name}' (known: {', '.join(sorted(IMPORTANCE))})")
    return IMPORTANCE[name]()


SCORED_ROLES = (Role.OUT, Role.IN)


def unit_sums(
    group: Group,
    constants: Mapping[str, np.ndarray],
    per_index: Callable[[np.ndarray, tuple[int, ...]], np.ndarray],
) -> np.ndarray:
    """Sum, over every scored constant slice of the group, the slice's value into the unit that
    owns it. `per_index(array, other_axes)` reduces `array` over `other_axes`, leaving one value
    per index of the channel axis (reducing in place avoids moving a large weight)."""
    totals = np.zeros(group.n_units)
    for space, role in group.roles.items():
        if role in SCORED_ROLES:
            array = constants[space.tensor]
            others = tuple(a for a in range(array.ndim) if a != space.axis)
            values = per_index(array, others)
            totals += np.bincount(group.labels[space], weights=values, minlength=group.n_units)
    return totals


# ---------------------------------------------------------------------------------------------
# Compensation: after a group's units are chosen, adjust what stays so the layers reading the
# group's channels keep their outputs. Values are in the original index space and are applied
# before the rewrite slices, so the zero-then-prune oracle still checks the structure exactly.
# ---------------------------------------------------------------------------------------------


@dataclass
class Update:
    """What a compensation pass changes."""

    weights: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # constant -> new value, same shape
    # consumer node position -> vector added to that layer's output (its bias, or a new Add)
    bias_deltas: dict[int, np.ndarray] = field(default_factory=dict)


class CompensationPass(ABC):
    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # every compensation so far fits calibration statistics
    needs_gram: ClassVar[bool] = False

    @abstractmethod
    def compensate(self, group: Group, removed: np.ndarray, context: ScoreContext) -> Update:
        """How to adjust the consumers of `group` once the units `removed` are gone;
        `context.stats` is a `graphprune.calibrate.CalibrationStats`."""


COMPENSATION: dict[str, type[CompensationPass]] = {}


def register_compensation(cls: type[CompensationPass]) -> type[CompensationPass]:
    COMPENSATION[cls.name] = cls
    return cls


def compensation(name: str) -> CompensationPass:
    """The registered compensation pass called `name`."""
    if name not in COMPENSATION:
        known = ", ".join(sorted(COMPENSATION)) or "none yet"
        raise KeyError(f"compensation '{name}' is not registered (registered: {known})")
    return COMPENSATION[name]()
