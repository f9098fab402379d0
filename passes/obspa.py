"""OBSPA: group-level Optimal Brain Surgeon importance and its weight update.

Source: Wang et al., "Structurally Prune Anything: Any Architecture, Any Framework, Any Time"
(2024), which applies Optimal Brain Surgeon (Hassibi & Stork, 1993) to the coupled-channel
groups of a dependency graph, with the layer-wise quadratic of OBC/SparseGPT (Frantar & Alistarh,
2022, 2023).

Every consumer of a group (a linear layer y = x W, W viewed as [input columns, outputs]) sees a
layer-wise loss  E(W') = ||X W - X W'||^2 = tr((W' - W)^T G (W' - W)),  G = X^T X, over its
calibration inputs X. With the damped Hessian

    H = G + lambda * mean(diag G) * I            (lambda = option "damp", default 0.01)

removing a unit whose input columns are S (one column for an MLP channel, head_dim columns for
a head, k*k for a conv channel) and letting the remaining columns move optimally costs

    cost(S) = tr(W_S^T ((H^-1)_SS)^-1 W_S),

and the optimal move of all columns is

    delta W = -(H^-1)_{:,S} ((H^-1)_SS)^-1 W_S           (it sets W_S to zero exactly).

The unit's score is its cost summed over the group's consumers: cheap-to-remove units score
low. With lambda = 0 and a full-rank X the cost is exactly the least output error reachable by
re-fitting the kept columns (tests check this against a brute-force least-squares fit).

The "obs" compensation applies the update after selection, unit after unit in the order given,
with the downdate  H^-1 <- H^-1 - (H^-1)_{:,S} ((H^-1)_SS)^-1 (H^-1)_{S,:}  between removals
(SparseGPT's sequence), keeping only the columns of H^-1 that later steps read. Units are taken
in blocks of about `BLOCK_COLUMNS` columns: for a quadratic loss, removing a block jointly equals
removing its units one by one, so blocking changes the cost of the loop, not its result. The
removed rows come out as zero; they are sliced away by the rewrite.

Groups that none of the calibrated consumers reads (no data about them) score by the L2
magnitude of their weights, so they still get an order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from graphprune.passes.base import (
    CompensationPass,
    ImportancePass,
    ScoreContext,
    Update,
    register,
    register_compensation,
)
from graphprune.passes.magnitude import L2Importance

from graphprune.calibrate import CalibrationStats, Consumer, column_units
from graphprune.depgraph import Group

DAMP = 0.01
BLOCK_COLUMNS = 128


# -- shared by the second-order passes (condition, mask tuning, reconstruction) ------------------


def scale_of(consumer: Consumer) -> float:
    """Gemm's alpha: the layer computes scale * x @ W (the contract's first version had none)."""
    return float(getattr(consumer, "scale", 1.0))


def weight_matrix(consumer: Consumer, constants: Mapping[str, np.ndarray]) -> np.ndarray:
    """The consumer's effective weight (alpha included) as float64 [input columns, outputs]."""
    matrix = consumer.matrix(np.asarray(constants[consumer.weight])).astype(np.float64)
    return matrix * scale_of(consumer)


def damped(gram: np.ndarray, damp: float) -> np.ndarray:
    """G + damp * mean(diag G) * I (a zero Gram, all inputs dead, is damped by `damp` alone)."""
    scale = float(np.mean(np.diag(gram))) if gram.size else 0.0
    return gram + damp * (scale if scale > 0 else 1.0) * np.eye(len(gram))


def inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix, kept symmetric."""
    result = np.linalg.inv(matrix)
    return (result + result.T) / 2


def gram_of(stats: CalibrationStats, consumer: Consumer) -> np.ndarray:
    gram = stats.of(consumer).gram
    if gram is None:
        raise ValueError(f"no Gram matrix collected for the input of {consumer.weight}")
    return gram


def columns_by_unit(units_of_columns: np.ndarray) -> dict[int, np.ndarray]:
    """Input columns of each unit that owns at least one."""
    order = np.argsort(units_of_columns, kind="stable")
    units, starts = np.unique(units_of_columns[order], return_index=True)
    return dict(zip(units.tolist(), np.split(order, starts[1:]), strict=True))


def damp_option(context: ScoreContext) -> float:
    return float(context.options.get("damp", DAMP))


# -- importance ----------------------------------------------------------------------------------


def obs_costs(weight: np.ndarray, h_inverse: np.ndarray, units: np.ndarray, n_units: int):
    """cost(u) = tr(W_S^T ((H^-1)_SS)^-1 W_S) for every unit u (S its columns; 0 if none)."""
    costs = np.zeros(n_units)
    by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
    for unit, columns in columns_by_unit(units).items():
        by_size.setdefault(len(columns), []).append((unit, columns))
    for members in by_size.values():  # units with as many columns are solved as one stack
        ids = np.array([unit for unit, _ in members])
        index = np.stack([columns for _, columns in members])  # [units, s]
        blocks = h_inverse[index[:, :, None], index[:, None, :]]  # [units, s, s]
        rows = weight[index]  # [units, s, outputs]
        costs[ids] = np.einsum("usk,usk->u", rows, np.linalg.solve(blocks, rows))
    return costs


@register
class ObspaImportance(ImportancePass):
    name = "obspa"
    needs_data = True
    needs_gram = True

    def score(self, group: Group, context: ScoreContext) -> np.ndarray:
        stats: CalibrationStats = context.stats
        consumers = stats.consumers(group.id) if stats is not None else []
        if not consumers:
            return L2Importance().score(group, context)
        total = np.zeros(group.n_units)
        for consumer in consumers:
            h_inverse = inverse(damped(gram_of(stats, consumer), damp_option(context)))
            weight = weight_matrix(consumer, context.constants)
            total += obs_costs(weight, h_inverse, column_units(consumer, group), group.n_units)
        return total


# -- compensation --------------------------------------------------------------------------------


def obs_update(
    weight: np.ndarray, hessian: np.ndarray, removal_order: list[np.ndarray]
) -> np.ndarray:
    """The weight after removing each column set of `removal_order` in turn with the OBS update
    and the H^-1 downdate; removed rows are zero.

    Only the columns of H^-1 that a later step reads are kept up to date: the update for S
    needs (H^-1)_{:,S}, and the downdate of those columns needs (H^-1)_{S,R} alone, so the
    n x |R| slab (H^-1)_{:,R} (R: every removed column) is solved for once and downdated in
    place; the full n x n inverse is never formed."""
    removed = np.concatenate(removal_order)
    slab = np.linalg.solve(hessian, np.eye(len(hessian))[:, removed])  # (H^-1)_{:,R}
    weight = weight.copy()
    start = 0
    for columns in removal_order:
        local = np.arange(start, start + len(columns))  # where S sits among R's columns
        start += len(columns)
        left = slab[:, local] @ np.linalg.inv(slab[columns][:, local])  # H^-1_{:,S} H^-1_SS^-1
        weight -= left @ weight[columns]
        slab -= left @ slab[columns]
    weight[removed] = 0.0  # zero in exact arithmetic; rounding leaves ~1e-16 behind
    return weight


def removal_blocks(
    units: np.ndarray, removed: np.ndarray, block_columns: int = BLOCK_COLUMNS
) -> list[np.ndarray]:
    """Columns of the removed units, in their order, cut into blocks of about `block_columns`."""
    by_unit = columns_by_unit(units)
    blocks, current = [], []
    for unit in np.asarray(removed).tolist():
        current.extend(by_unit.get(unit, np.array([], dtype=np.int64)).tolist())
        if len(current) >= block_columns:
            blocks.append(np.array(current))
            current = []
    if current:
        blocks.append(np.array(current))
    return blocks


@register_compensation
class ObsCompensation(CompensationPass):
    name = "obs"
    needs_gram = True
    block_columns = BLOCK_COLUMNS

    def compensate(self, group: Group, removed: np.ndarray, context: ScoreContext) -> Update:
        stats: CalibrationStats = context.stats
        update = Update()
        for consumer in stats.consumers(group.id):
            order = removal_blocks(column_units(consumer, group), removed, self.block_columns)
            if not order:
                continue
            hessian = damped(gram_of(stats, consumer), damp_option(context))
            original = np.asarray(context.constants[consumer.weight])
            weight = obs_update(consumer.matrix(original).astype(np.float64), hessian, order)
            update.weights[consumer.weight] = consumer.from_matrix(weight, original)
        return update
