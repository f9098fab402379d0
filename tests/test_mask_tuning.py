"""Mask tuning (per kept channel least-squares scales) against a brute-force fit on the data."""

from __future__ import annotations

import numpy as np
import pytest
from graphprune.passes import mask_tuning  # noqa: F401  (registers the pass)
from graphprune.passes.base import COMPENSATION

from graphprune.calibrate import column_units
from tests.test_obspa import GRAPHS, calibrated, matrix_of, mlp_graph


def scales_by_least_squares(x, w, removed_columns, kernel):
    """m minimizing ||X W - sum_c m_c X_c W_c||^2 over the kept channels c, each term
    flattened into one column of a design matrix (no Gram algebra)."""
    kept = np.setdiff1d(np.arange(len(w)), removed_columns)
    channels = np.unique(kept // kernel)
    design = np.stack(
        [
            (x[:, kept[kept // kernel == c]] @ w[kept[kept // kernel == c]]).ravel()
            for c in channels
        ],
        axis=1,
    )
    scales, *_ = np.linalg.lstsq(design, (x @ w).ravel(), rcond=None)
    return channels, scales


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_undamped_mask_tuning_is_the_least_squares_channel_scaling(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    context.options["damp"] = 0.0
    removed = np.array([1, 4])
    update = COMPENSATION["mask"]().compensate(group, removed, context)
    for consumer in consumers:
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        gone = np.flatnonzero(np.isin(column_units(consumer, group), removed))
        channels, scales = scales_by_least_squares(x, w, gone, consumer.kernel)
        tuned = consumer.matrix(update.weights[consumer.weight]).astype(np.float64)
        assert np.all(tuned[gone] == 0)
        for channel, scale in zip(channels, scales, strict=True):
            rows = slice(channel * consumer.kernel, (channel + 1) * consumer.kernel)
            np.testing.assert_allclose(tuned[rows], scale * w[rows], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
@pytest.mark.parametrize("seed", range(5))
def test_mask_tuning_never_increases_the_output_error(build, anchor, seed):
    group, consumers, data, context = calibrated(build(), seed=seed, anchor=anchor)
    removed = np.random.default_rng(seed).choice(group.n_units, 3, replace=False)
    update = COMPENSATION["mask"]().compensate(group, removed, context)
    for consumer in consumers:
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        gone = np.isin(column_units(consumer, group), removed)
        tuned = consumer.matrix(update.weights[consumer.weight]).astype(np.float64)
        error = np.sum((x @ w - x @ tuned) ** 2)
        error_plain = np.sum((x @ w - x[:, ~gone] @ w[~gone]) ** 2)
        assert error < error_plain


def test_nothing_removed_from_a_consumer_leaves_it_alone():
    group, _, _, context = calibrated(mlp_graph())
    update = COMPENSATION["mask"]().compensate(group, np.array([], dtype=np.int64), context)
    assert not update.weights and not update.bias_deltas
