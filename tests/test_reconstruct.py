"""Least-squares reconstruction against a brute-force affine fit on the calibration data."""

from __future__ import annotations

import numpy as np
import pytest
from graphprune.passes import reconstruct  # noqa: F401  (registers the pass)
from graphprune.passes.base import COMPENSATION

from graphprune.calibrate import column_units
from tests.test_obspa import GRAPHS, calibrated, conv_graph, input_stats, matrix_of


def apply(update, consumer, x):
    """The compensated consumer's output (without its own bias, which both sides share)."""
    refit = consumer.matrix(update.weights[consumer.weight]).astype(np.float64)
    return x @ refit + update.bias_deltas[consumer.node]


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_undamped_reconstruction_is_the_affine_least_squares_fit(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    context.options["damp"] = 0.0
    removed = np.array([2, 5])
    update = COMPENSATION["reconstruct"]().compensate(group, removed, context)
    assert set(update.bias_deltas) == {c.node for c in consumers}
    for consumer in consumers:
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        kept = ~np.isin(column_units(consumer, group), removed)
        design = np.hstack([x[:, kept], np.ones((len(x), 1))])  # kept columns and an offset
        fit, *_ = np.linalg.lstsq(design, x @ w, rcond=None)
        refit = consumer.matrix(update.weights[consumer.weight]).astype(np.float64)
        np.testing.assert_allclose(refit[kept], fit[:-1], rtol=1e-4, atol=1e-5)
        assert np.all(refit[~kept] == 0)
        np.testing.assert_allclose(update.bias_deltas[consumer.node], fit[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
@pytest.mark.parametrize("seed", range(3))
def test_reconstruction_strictly_reduces_the_error_and_keeps_the_mean_output(build, anchor, seed):
    group, consumers, data, context = calibrated(build(), seed=seed, anchor=anchor)
    removed = np.random.default_rng(seed).choice(group.n_units, 3, replace=False)
    update = COMPENSATION["reconstruct"]().compensate(group, removed, context)
    for consumer in consumers:
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        kept = ~np.isin(column_units(consumer, group), removed)
        dense, compensated = x @ w, apply(update, consumer, x)
        error = np.sum((dense - compensated) ** 2)
        error_plain = np.sum((dense - x[:, kept] @ w[kept]) ** 2)
        design = np.hstack([x[:, kept], np.ones((len(x), 1))])
        fit, *_ = np.linalg.lstsq(design, dense, rcond=None)
        error_best = np.sum((dense - design @ fit) ** 2)
        assert error < error_plain
        assert error <= 1.02 * error_best  # the default damping stays close to the optimum
        # the offset makes the mean output exact (up to the float32 weights)
        scale = np.abs(dense).mean()
        np.testing.assert_allclose(compensated.mean(axis=0), dense.mean(axis=0), atol=1e-5 * scale)


def test_reconstruction_with_fewer_rows_than_columns_still_never_hurts():
    group, consumers, data, context = calibrated(conv_graph(), anchor=("c1", 0))
    consumer = consumers[0]
    few = data[consumer.input][:20]  # 20 rows, 54 columns: a singular Gram
    context.stats.inputs[consumer.input] = input_stats(few)
    removed = np.array([0, 1, 2])
    update = COMPENSATION["reconstruct"]().compensate(group, removed, context)
    w = matrix_of(consumer, context.constants)
    kept = ~np.isin(column_units(consumer, group), removed)
    error = np.sum((few @ w - apply(update, consumer, few)) ** 2)
    assert error < np.sum((few @ w - few[:, kept] @ w[kept]) ** 2)
