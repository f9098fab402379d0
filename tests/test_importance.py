"""Importance passes against plain numpy references on a handcrafted graph."""

from __future__ import annotations

import numpy as np
from graphprune.passes import ScoreContext, importance

from tests.graphs import analyze, group_with, model, node, positive, weight


def conv_bn_conv():
    consts = {
        "c.w": weight(6, 3, 3, 3),
        "c.b": weight(6),
        "s": positive(6),
        "b": weight(6),
        "m": weight(6),
        "v": positive(6),
        "c2.w": weight(4, 6, 1, 1),
    }
    nodes = [
        node("Conv", ["x", "c.w", "c.b"], ["c"]),
        node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
        node("Conv", ["bn", "c2.w"], ["y"]),
    ]
    return model(nodes, {"x": (1, 3, 8, 8)}, ["y"], consts), consts


def test_l1_and_l2_sum_every_scored_slice_and_skip_running_statistics():
    made, w = conv_bn_conv()
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    context = ScoreContext(constants=dep.index.constants)
    parts = [
        w["c.w"].reshape(6, -1),
        w["c.b"][:, None],
        w["s"][:, None],
        w["b"][:, None],
        w["c2.w"].transpose(1, 0, 2, 3).reshape(6, -1),
    ]
    expected_l1 = sum(np.abs(p).sum(axis=1) for p in parts)
    expected_l2 = sum(np.square(p).sum(axis=1) for p in parts)
    order = group.labels[group.anchor]  # unit of each conv output channel
    np.testing.assert_allclose(
        importance("l1").score(group, context)[order], expected_l1, rtol=1e-6
    )
    np.testing.assert_allclose(
        importance("l2").score(group, context)[order], expected_l2, rtol=1e-6
    )


def test_random_is_reproducible_per_seed_and_group():
    made, _ = conv_bn_conv()
    _, dep = analyze(made)
    group = group_with(dep, "c.w", 0)
    scorer = importance("random")
    a = scorer.score(group, ScoreContext(constants={}, seed=1))
    b = scorer.score(group, ScoreContext(constants={}, seed=1))
    c = scorer.score(group, ScoreContext(constants={}, seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
