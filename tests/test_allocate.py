"""Allocation: counts, rounding, caps, and never emptying a group."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_adaptive_standardizes_each_group_and_spends_a_parameter_budget():
    groups = [group("heads", 4), group("mlp", 8)]
    # raw scales differ 1000x; standardized, heads are [-1.34, -0.45, 0.45, 1.34] and mlp
    # runs from -1.53 to 1.53 in equal steps
    scores = {"heads": np.array([1000.0, 2000, 3000, 4000]), "mlp": np.arange(8.0)}
    costs = {"heads": np.full(4, 10.0), "mlp": np.ones(8)}
    # budget 0.25 * (40 + 8) = 12 parameters: mlp 0 (z -1.53, 1), head 0 (-1.34, 10), mlp 1
    # (-1.09, 1); the next, mlp 2 (-0.65), would pass the budget
    removals = allocate(groups, scores, 0.25, mode="adaptive", costs=costs)
    assert removals["heads"].tolist() == [0]
    assert removals["mlp"].tolist() == [0, 1]


def test_adaptive_ignores_the_scale_of_a_groups_scores():
    groups = [group("a", 6), group("b", 6)]
    base = np.array([3.0, 1, 4, 1.5, 5, 9])
    one = allocate(groups, {"a": base, "b": base + 0.5}, 0.5, mode="adaptive")
    scaled = allocate(groups, {"a": base * 1e6, "b": base * 1e-3}, 0.5, mode="adaptive")
    assert {k: v.tolist() for k, v in one.items()} == {k: v.tolist() for k, v in scaled.items()}
    assert sum(len(v) for v in one.values()) == 6  # unit costs: half of the 12 units


def test_adaptive_keeps_a_unit_per_group_and_honours_round_to():
    groups = [group("a", 4), group("b", 16)]
    scores = {"a": np.array([0.0, 0, 0, 1e-9]), "b": np.linspace(0, 1, 16)}
    removals = allocate(groups, scores, 0.9, mode="adaptive")
    assert len(removals["a"]) == 3  # never emptied
    rounded = allocate(groups, scores, 0.5, mode="adaptive", round_to=4)
    assert all((n.n_units - len(rounded.get(n.id, []))) % 4 == 0 for n in groups)


def test_unit_params_count_every_slice_a_unit_removes():
    from graphprune.allocate import unit_params
    from tests.graphs import analyze, group_with
    from tests.test_importance import conv_bn_conv

    made, _ = conv_bn_conv()
    _, dep = analyze(made)
    g = group_with(dep, "c.w", 0)
    # conv row 3*3*3 + bias 1 + BN scale, bias, mean, var 4 + next conv's column 4*1*1
    np.testing.assert_array_equal(unit_params(g, dep.index.shapes), np.full(6, 27 + 1 + 4 + 4))


@pytest.mark.zoo
@pytest.mark.parametrize("allocation", ["global", "adaptive"])
def test_layers_sharing_one_shape_vector_lose_the_same_number_of_heads(allocation, tmp_path):
    """GPT-2's dynamo export builds one [batch, seq, heads, head_dim] vector for every layer:
    a non-uniform allocation must still give every tied layer the same head count."""
    from graphprune.allocate import tied_groups
    from graphprune.pipeline import analyze, prune
    from models.zoo import ZOO, example_inputs, export

    source = export("gpt2_tiny", "dynamo")
    heads = [g for g in analyze(source).dep.groups if g.kind == "head" and g.prunable]
    ties = tied_groups(heads)
    assert ties and {g.id for g in heads} <= set().union(*ties)
    result = prune(
        source,
        tmp_path / "out.onnx",
        ratio=0.3,
        allocation=allocation,
        providers=("cpu",),
        inputs=example_inputs(ZOO["gpt2_tiny"]),
    )
    assert result.passed, [c.line() for c in result.checks]
    planned = {entry.group: len(entry.removed) for entry in result.plan.groups}
    assert len({planned.get(g.id, 0) for g in heads}) == 1
