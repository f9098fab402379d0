"""Allocation: counts, rounding, caps, and never emptying a group."""

from __future__ import annotations

import numpy as np

from graphprune.allocate import allocate
from graphprune.depgraph import Group
from graphprune.ops import Space


def group(name: str, n: int, blocked: list[str] | None = None) -> Group:
    space = Space(name, 0)
    return Group(
        id=name,
        anchor=space,
        sizes={space: n},
        labels={space: np.arange(n)},
        n_units=n,
        roles={},
        fixes=[],
        blocked=blocked or [],
    )


def test_uniform_removes_the_lowest_floor_ratio_units_of_each_group():
    groups = [group("a", 10), group("b", 7)]
    scores = {"a": np.arange(10.0)[::-1], "b": np.array([5, 1, 4, 2, 3, 0, 6.0])}
    removals = allocate(groups, scores, 0.3)
    assert removals["a"].tolist() == [7, 8, 9]
    assert removals["b"].tolist() == [1, 5]  # floor(2.1) = 2 lowest: scores 0 and 1


def test_round_to_keeps_a_multiple_and_rounds_up():
    removals = allocate([group("a", 64)], {"a": np.arange(64.0)}, 0.3, round_to=8)
    assert 64 - len(removals["a"]) == 48  # keep 45 -> 48


def test_a_group_is_never_emptied():
    removals = allocate([group("a", 3)], {"a": np.zeros(3)}, 0.99)
    assert len(removals["a"]) == 2
    removals = allocate([group("a", 4)], {"a": np.zeros(4)}, 0.9, round_to=8)
    assert "a" not in removals  # 4 units cannot keep a multiple of 8: left whole


def test_blocked_groups_are_never_touched():
    removals = allocate([group("a", 8, blocked=["reason"])], {"a": np.zeros(8)}, 0.5)
    assert removals == {}


def test_global_ranks_across_groups_after_normalizing_and_caps_each_group():
    groups = [group("a", 10), group("b", 10)]
    # after dividing by the group mean, every unit of b is below every unit of a
    scores = {"a": np.linspace(1.0, 2.0, 10), "b": np.concatenate([np.full(9, 0.1), [10.0]])}
    removals = allocate(groups, scores, 0.5, mode="global", max_group_ratio=0.8)
    assert len(removals["b"]) == 8 and len(removals["a"]) == 2
    assert removals["a"].tolist() == [0, 1]


def test_ties_break_by_lower_index():
    removals = allocate([group("a", 6)], {"a": np.ones(6)}, 0.5)
    assert removals["a"].tolist() == [0, 1, 2]
