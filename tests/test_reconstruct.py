"""Least-squares reconstruction against a brute-force affine fit on the calibration data."""

from __future__ import annotations

import numpy as np
import pytest
from graphprune.passes import mask_tuning, obspa, reconstruct  # noqa: F401  (registration)
from graphprune.passes.base import COMPENSATION, ScoreContext, importance

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


def stats_error(inputs, w, new, offset) -> float:
    """||X W - (X W' + offset)||^2 from the statistics alone (G, mean, count)."""
    d = w - new
    n = inputs.count
    return (
        np.einsum("io,io->", d, inputs.gram @ d)
        - 2 * n * offset @ (inputs.mean @ d)
        + n * offset @ offset
    )


@pytest.mark.zoo
def test_compensation_on_real_minilm_layers_calibrated_by_the_engine():
    """Real weights (all-MiniLM-L6-v2), statistics from the calibration engine on onnxruntime:
    every consumer's output error on the calibration data drops with OBS and reconstruction and
    never grows with mask tuning, for heads (o_proj) and MLP channels (down_proj)."""
    from graphprune.allocate import allocate
    from graphprune.calibrate import calibrate
    from graphprune.pipeline import analyze
    from models.zoo import ZOO, example_inputs, export

    if not ZOO["minilm_l6"].available():
        pytest.skip("all-MiniLM-L6-v2 is not installed")
    analysis = analyze(export("minilm_l6", "torchscript"))
    prunable = [g for g in analysis.dep.groups if g.prunable]
    groups = [next(g for g in prunable if g.kind == kind) for kind in ("head", "channel")]
    sizes = {"batch": 8, "sequence": 32}
    feeds = [example_inputs(ZOO["minilm_l6"], seed=s, sizes=sizes) for s in range(4)]
    stats = calibrate(analysis.work, analysis.dep, groups, feeds, gram=True)
    context = ScoreContext(constants=analysis.dep.index.constants, stats=stats)
    scores = {g.id: importance("obspa").score(g, context) for g in groups}
    removals = allocate(groups, scores, 0.5, "uniform")
    for group in groups:
        removed = removals[group.id]
        names = ("obs", "mask", "reconstruct")
        updates = {n: COMPENSATION[n]().compensate(group, removed, context) for n in names}
        for consumer in stats.consumers(group.id):
            inputs, w = stats.of(consumer), matrix_of(consumer, context.constants)
            gone = np.isin(column_units(consumer, group), removed)
            plain = stats_error(inputs, w, np.where(gone[:, None], 0.0, w), np.zeros(w.shape[1]))
            for name, update in updates.items():
                new = consumer.matrix(update.weights[consumer.weight]).astype(np.float64)
                offset = update.bias_deltas.get(consumer.node, np.zeros(w.shape[1]))
                ratio = stats_error(inputs, w, new, offset) / plain
                assert ratio < (0.95 if name == "mask" else 0.3), (name, consumer.weight, ratio)
