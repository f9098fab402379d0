"""Wanda-sp against numpy: sum over a unit's input columns of ||x_j||_2 * sum_i |W_ij|."""

from __future__ import annotations

import numpy as np
from graphprune.passes import ScoreContext, importance

from graphprune.calibrate import calibrate
from graphprune.ops import Space
from tests.graphs import analyze, group_with, model, node, weight
from tests.test_calibrate import batches_of, dynamic_batch, exposed_run
from tests.test_fluctuation import conv_inputs, two_consumers

RNG = np.random.default_rng(5)


def test_wanda_on_conv_columns_and_two_consumers():
    made, w = two_consumers()
    feeds = [{"x": RNG.standard_normal((n, 3, 6, 6)).astype(np.float32)} for n in (1, 4)]
    work, dep = analyze(made)
    group = group_with(dep, "w1", 0)
    stats = calibrate(work, dep, [group], batches_of(feeds))
    patches, pixels = conv_inputs(made, feeds)
    w2 = np.abs(w["w2"].astype(np.float64).reshape(4, -1)).sum(axis=0)  # per c*9 + p
    w3 = np.abs(w["w3"].astype(np.float64).reshape(2, 5)).sum(axis=0)
    norms = np.sqrt((patches**2).sum(axis=0))
    expected = (norms * w2).reshape(5, 9).sum(axis=1) + np.sqrt((pixels**2).sum(axis=0)) * w3
    context = ScoreContext(constants=dep.index.constants, stats=stats)
    scores = importance("wanda").score(group, context)
    np.testing.assert_allclose(scores[group.labels[Space("w1", 0)]], expected, rtol=1e-6)


def test_wanda_on_a_gemm_with_trans_b():
    consts = {"w1": weight(7, 4), "w2": weight(3, 7)}
    nodes = [
        node("Gemm", ["x", "w1"], ["g"], transB=1),
        node("Relu", ["g"], ["h"]),
        node("Gemm", ["h", "w2"], ["y"], transB=1),
    ]
    made = dynamic_batch(model(nodes, {"x": (1, 4)}, ["y"], consts))
    work, dep = analyze(made)
    group = group_with(dep, "w1", 0)
    feeds = [{"x": RNG.standard_normal((6, 4)).astype(np.float32)}]
    stats = calibrate(work, dep, [group], batches_of(feeds))
    h = exposed_run(made, feeds[0], "h").astype(np.float64)
    expected = np.sqrt((h**2).sum(axis=0)) * np.abs(consts["w2"].astype(np.float64)).sum(axis=0)
    context = ScoreContext(constants=dep.index.constants, stats=stats)
    scores = importance("wanda").score(group, context)
    np.testing.assert_allclose(scores[group.labels[Space("w1", 0)]], expected, rtol=1e-6)
