"""OBSPA importance and the OBS update against numpy references on handcrafted graphs.

Calibration statistics are built by hand here (X, G = X^T X in numpy), so the passes are tested
independently of the calibration engine. The helpers are shared by the other second-order tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from graphprune.passes import ScoreContext, importance
from graphprune.passes.base import COMPENSATION
from graphprune.passes.obspa import obs_update, removal_blocks  # (registers the passes)

from graphprune.calibrate import CalibrationStats, Consumer, InputStats, column_units
from graphprune.ops import Space
from tests.graphs import analyze, group_with, model, node, weight

ROWS = 300


def mlp_graph():
    """h = relu(x w1) read by a MatMul (w2, [in, out]) and a Gemm (w3, transB: [out, in])."""
    consts = {"w1": weight(8, 6), "w2": weight(6, 5), "w3": weight(4, 6), "b3": weight(4)}
    nodes = [
        node("MatMul", ["x", "w1"], ["a"]),
        node("Relu", ["a"], ["h"]),
        node("MatMul", ["h", "w2"], ["y1"]),
        node("Gemm", ["h", "w3", "b3"], ["y2"], transB=1),
    ]
    return model(nodes, {"x": (2, 8)}, ["y1", "y2"], consts)


def conv_graph():
    """A conv read by a 3x3 conv: each unit owns 9 input columns of the consumer."""
    consts = {"c1": weight(6, 3, 3, 3), "c2": weight(4, 6, 3, 3)}
    nodes = [
        node("Conv", ["x", "c1"], ["a"], pads=[1, 1, 1, 1]),
        node("Relu", ["a"], ["h"]),
        node("Conv", ["h", "c2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return model(nodes, {"x": (1, 3, 8, 8)}, ["y"], consts)


def consumers_of(work, dep, group) -> list[Consumer]:
    """The linear layers reading `group` (what the calibration engine will list)."""
    found = []
    for position, layer in enumerate(work.graph.node):
        if (
            layer.op_type not in ("MatMul", "Gemm", "Conv")
            or layer.input[1] not in dep.index.constants
        ):
            continue
        shape = dep.index.constants.shape(layer.input[1])
        transposed = any(a.name == "transB" and a.i for a in layer.attribute)
        in_axis = 1 if layer.op_type == "Conv" or transposed else 0
        if Space(layer.input[1], in_axis) in group.sizes:
            kernel = int(np.prod(shape[2:])) if layer.op_type == "Conv" else 1
            found.append(
                Consumer(position, layer.op_type, layer.input[1], layer.input[0], in_axis, kernel)
            )
    return found


def correlated(rows: int, columns: int, seed: int) -> np.ndarray:
    """Inputs with correlated columns, a near-duplicate pair (last two) and a non-zero mean."""
    rng = np.random.default_rng(seed)
    mixing = np.eye(columns) + 0.4 * rng.standard_normal((columns, columns))
    data = rng.standard_normal((rows, columns)) @ mixing + rng.standard_normal(columns)
    data[:, -1] = data[:, -2] + 0.05 * rng.standard_normal(rows)
    return data


def input_stats(data: np.ndarray) -> InputStats:
    mean = data.mean(axis=0)
    return InputStats(
        count=len(data),
        mean=mean,
        m2=((data - mean) ** 2).sum(axis=0),
        sumsq=(data**2).sum(axis=0),
        gram=data.T @ data,
    )


def calibrated(made, seed: int = 0, anchor=("w1", 1)):
    """(group, consumers, {consumer input: X}, context) for `made`'s group at `anchor`."""
    work, dep = analyze(made)
    group = group_with(dep, *anchor)
    consumers = consumers_of(work, dep, group)
    columns = {
        c.input: dep.index.constants.shape(c.weight)[c.in_axis] * c.kernel for c in consumers
    }
    data = {name: correlated(ROWS, n, seed) for name, n in columns.items()}
    stats = CalibrationStats(
        by_group={group.id: consumers}, inputs={k: input_stats(v) for k, v in data.items()}
    )
    context = ScoreContext(constants=dep.index.constants, stats=stats)
    return group, consumers, data, context


def matrix_of(consumer: Consumer, constants) -> np.ndarray:
    return consumer.matrix(np.asarray(constants[consumer.weight])).astype(np.float64)


def damped_reference(gram: np.ndarray, damp: float) -> np.ndarray:
    return gram + damp * np.trace(gram) / len(gram) * np.eye(len(gram))


def obs_cost_reference(w: np.ndarray, gram: np.ndarray, columns: np.ndarray, damp: float) -> float:
    h_inverse = np.linalg.inv(damped_reference(gram, damp))
    block = h_inverse[np.ix_(columns, columns)]
    return float(np.trace(w[columns].T @ np.linalg.inv(block) @ w[columns]))


GRAPHS = [
    pytest.param(mlp_graph, ("w1", 1), id="mlp"),
    pytest.param(conv_graph, ("c1", 0), id="conv"),
]


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_obspa_score_is_the_group_obs_cost_summed_over_consumers(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    expected = np.zeros(group.n_units)
    for consumer in consumers:
        w = matrix_of(consumer, context.constants)
        units = column_units(consumer, group)
        for unit in range(group.n_units):
            columns = np.flatnonzero(units == unit)
            expected[unit] += obs_cost_reference(
                w, data[consumer.input].T @ data[consumer.input], columns, 0.01
            )
    scores = importance("obspa").score(group, context)
    np.testing.assert_allclose(scores, expected, rtol=1e-9)
    assert len(consumers) == (2 if anchor[0] == "w1" else 1)


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_undamped_obs_cost_is_the_least_error_of_refitting_the_kept_columns(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    context.options["damp"] = 0.0
    scores = importance("obspa").score(group, context)
    for unit in range(group.n_units):
        least_error = 0.0
        for consumer in consumers:
            x, w = data[consumer.input], matrix_of(consumer, context.constants)
            kept = column_units(consumer, group) != unit
            refit, *_ = np.linalg.lstsq(x[:, kept], x @ w, rcond=None)
            least_error += np.sum((x @ w - x[:, kept] @ refit) ** 2)
        assert scores[unit] == pytest.approx(least_error, rel=1e-7)


def test_a_near_duplicate_channel_is_cheap_to_remove():
    group, consumers, _, context = calibrated(mlp_graph())
    scores = importance("obspa").score(group, context)
    units = column_units(consumers[0], group)
    duplicates = set(units[-2:])  # the last two input columns are near-copies of each other
    assert set(np.argsort(scores)[:2]) == duplicates


def test_groups_nobody_calibrated_score_by_magnitude():
    group, _, _, context = calibrated(mlp_graph())
    context.stats = CalibrationStats()
    np.testing.assert_array_equal(
        importance("obspa").score(group, context), importance("l2").score(group, context)
    )


def ridge_refit(x: np.ndarray, w: np.ndarray, kept: np.ndarray, damp: float) -> np.ndarray:
    """argmin over W' (rows K, others 0) of ||X W - X W'||^2 + delta ||W' - W||^2, by least
    squares on X stacked over sqrt(delta) I: the OBS problem, solved without H^-1."""
    delta = damp * np.trace(x.T @ x) / x.shape[1]
    stacked = np.vstack([x, np.sqrt(delta) * np.eye(x.shape[1])])
    refit = np.zeros_like(w)
    refit[kept], *_ = np.linalg.lstsq(stacked[:, kept], stacked @ w, rcond=None)
    return refit


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_obs_update_solves_the_damped_refit_and_does_not_depend_on_the_sequence(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    removed = np.array([4, 1, 2])
    for consumer in consumers:
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        units = column_units(consumer, group)
        hessian = damped_reference(x.T @ x, 0.01)
        one_by_one = obs_update(w, hessian, removal_blocks(units, removed, block_columns=1))
        all_at_once = obs_update(w, hessian, removal_blocks(units, removed, block_columns=10**6))
        expected = ridge_refit(x, w, ~np.isin(units, removed), 0.01)
        np.testing.assert_allclose(one_by_one, expected, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(all_at_once, expected, rtol=1e-7, atol=1e-9)
        assert len(removal_blocks(units, removed, block_columns=1)) == len(removed)


@pytest.mark.parametrize(("build", "anchor"), GRAPHS)
def test_obs_compensation_strictly_reduces_the_consumer_output_error(build, anchor):
    group, consumers, data, context = calibrated(build(), anchor=anchor)
    removed = np.array([0, 3, 5])
    update = COMPENSATION["obs"]().compensate(group, removed, context)
    assert set(update.weights) == {c.weight for c in consumers}
    assert not update.bias_deltas
    for consumer in consumers:
        original = np.asarray(context.constants[consumer.weight])
        new = update.weights[consumer.weight]
        assert new.shape == original.shape and new.dtype == original.dtype
        x, w = data[consumer.input], matrix_of(consumer, context.constants)
        gone = np.isin(column_units(consumer, group), removed)
        compensated = consumer.matrix(new).astype(np.float64)
        assert np.all(compensated[gone] == 0)
        plain = np.where(gone[:, None], 0.0, w)
        error = np.sum((x @ w - x @ compensated) ** 2)
        error_plain = np.sum((x @ w - x @ plain) ** 2)
        assert error < 0.9 * error_plain, (error, error_plain)


def test_gemm_alpha_scales_the_cost_by_its_square():
    if "scale" not in Consumer.__dataclass_fields__:
        pytest.skip("this version of the calibration contract has no Consumer.scale")
    group, consumers, _, context = calibrated(mlp_graph())
    before = importance("obspa").score(group, context)
    gemm = next(c for c in consumers if c.op_type == "Gemm")
    alone = dataclasses.replace(context.stats, by_group={group.id: [gemm]})
    plain = importance("obspa").score(group, dataclasses.replace(context, stats=alone))
    doubled = dataclasses.replace(gemm, scale=2.0)
    context.stats.by_group[group.id] = [c if c is not gemm else doubled for c in consumers]
    np.testing.assert_allclose(importance("obspa").score(group, context), before + 3 * plain)
