"""Condition-number importance and the kappa report against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from graphprune.passes import importance
from graphprune.passes.condition import conditioning, kappa  # (registers the pass)

from graphprune.calibrate import CalibrationStats, column_units
from tests.test_obspa import GRAPHS, calibrated, input_stats, matrix_of, mlp_graph


def vif_by_regression(data: np.ndarray, damp: float) -> np.ndarray:
    """VIF_j = ||x_j||^2 / ||x_j - X_{-j} beta||^2, regressing column j on the others (no
    intercept) over X stacked on sqrt(delta) I: the damped Gram without inverting it."""
    columns = data.shape[1]
    delta = damp * np.trace(data.T @ data) / columns
    stacked = np.vstack([data, np.sqrt(delta) * np.eye(columns)])
    vif = np.empty(columns)
    for j in range(columns):
        others = np.delete(stacked, j, axis=1)
        beta, *_ = np.linalg.lstsq(others, stacked[:, j], rcond=None)
        residual = stacked[:, j] - others @ beta
        vif[j] = (stacked[:, j] @ stacked[:, j]) / (residual @ residual)
    return vif


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_condition_score_is_weight_energy_times_gram_diagonal_over_vif(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    expected = np.zeros(group.n_units)
    for consumer in consumers:
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        damped_diagonal = (x**2).sum(axis=0) + 0.01 * np.trace(x.T @ x) / x.shape[1]
        per_column = (w**2).sum(axis=1) * damped_diagonal / vif_by_regression(x, 0.01)
        units = column_units(consumer, group)
        for unit in range(group.n_units):
            expected[unit] += per_column[units == unit].sum()
    np.testing.assert_allclose(importance("condition").score(group, context), expected, rtol=1e-7)


def test_redundant_channels_score_lowest_though_their_weights_are_large():
    group, consumers, data, context = calibrated(mlp_graph())
    data = {k: v / np.linalg.norm(v, axis=0) for k, v in data.items()}  # equal G_jj
    context.stats.inputs = {k: input_stats(v) for k, v in data.items()}
    heavy = np.array([1, 1, 1, 1, 1.5, 1.5])  # the near-duplicate channels 4, 5 weigh the most
    constants = dict(context.constants)
    for name, axis in (("w1", 0), ("w2", 1), ("w3", 0)):  # equal norms per channel, then heavy
        value = constants[name] / np.linalg.norm(constants[name], axis=axis, keepdims=True)
        constants[name] = value * (heavy if axis == 0 else heavy[:, None])
    context.constants = constants
    duplicates = set(column_units(consumers[0], group)[[4, 5]])
    scores = importance("condition").score(group, context)
    assert set(np.argsort(scores)[:2]) == duplicates
    magnitude = importance("l2").score(group, context)
    assert set(np.argsort(magnitude)[-2:]) == duplicates


def test_kappa_before_and_after_pruning_matches_numpy_and_drops_without_a_duplicate():
    group, consumers, data, context = calibrated(mlp_graph())
    units = column_units(consumers[0], group)
    removed = np.array([units[-1]])  # one of the near-duplicate pair
    reports = conditioning(group, removed, context.stats)
    assert [r.weight for r in reports] == [c.weight for c in consumers]
    for report, consumer in zip(reports, consumers, strict=True):
        gram = data[consumer.input].T @ data[consumer.input]
        kept = ~np.isin(column_units(consumer, group), removed)
        assert report.before == pytest.approx(np.linalg.cond(gram), rel=1e-6)
        assert report.after == pytest.approx(np.linalg.cond(gram[np.ix_(kept, kept)]), rel=1e-6)
        assert report.after < report.before / 10


def test_kappa_of_a_singular_gram_is_infinite():
    data = np.random.default_rng(0).standard_normal((3, 5))  # 3 rows, 5 columns: rank 3
    assert kappa(data.T @ data) == float("inf")
    assert kappa(np.diag([4.0, 1.0])) == pytest.approx(4.0)


def test_condition_needs_data_and_falls_back_to_magnitude_without_consumers():
    group, _, _, context = calibrated(mlp_graph())
    assert importance("condition").needs_data
    context.stats = CalibrationStats()
    np.testing.assert_array_equal(
        importance("condition").score(group, context), importance("l2").score(group, context)
    )
