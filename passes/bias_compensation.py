"""FLAP bias compensation, and how any compensation `Update` is applied to a model.

An, Zhao, Yu, Tang, Wang, "Fluctuation-based Adaptive Structured Pruning for Large Language
Models", AAAI 2024, Eq. 6. A consumer layer computes y = scale * x @ W2 + b (W2: [input
columns, outputs]). Removing the input columns S drops scale * x_S @ W2[S, :]; replacing each
removed column by its calibration mean instead gives

    y' = scale * x_K @ W2[K, :] + (b + scale * mean(x_S) @ W2[S, :])

so the compensation is a constant added to the layer's output, and the layer's mean output over
the calibration data is kept exactly (E[y'] = E[y] by linearity; for Conv the means are over
every patch position, padding zeros included, so the mean over every output position is kept).

Applying an `Update` (from any compensation pass) to the model the plan was made for, before
slicing, in the original index space:
- `weights`: each constant is replaced by its new value (same shape and dtype);
- `bias_deltas`: a layer whose `Consumer.bias` is set (Gemm C, Conv B, the constant of the Add
  right after a MatMul, each read by that layer alone) gets the delta added in place (divided
  by Gemm's beta); any other layer gets a new Add right after it, inserted once the graph has
  been sliced (inserting earlier would shift the node positions the rewrite's fixes use), into
  the full model (for the oracle) and into the pruned one with the delta cut to the kept output
  channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from graphprune.passes.base import (
    CompensationPass,
    ScoreContext,
    Update,
    register_compensation,
)

from graphprune.calibrate import CalibrationStats, Consumer, losing_consumers
from graphprune.depgraph import Group
from graphprune.edit import ConstantStore
from graphprune.graph import attribute
from graphprune.ops import Space


@register_compensation
class BiasCompensation(CompensationPass):
    name = "bias"

    def compensate(self, group: Group, removed: np.ndarray, context: ScoreContext) -> Update:
        stats: CalibrationStats = context.stats
        update = Update()
        for consumer, columns in losing_consumers(stats, group, removed):
            weight = consumer.matrix(np.asarray(context.constants[consumer.weight]))[columns]
            delta = consumer.scale * (stats.of(consumer).mean[columns] @ weight.astype(np.float64))
            update.bias_deltas[consumer.node] = update.bias_deltas.get(consumer.node, 0) + delta
        return update


def merge(updates: Iterable[Update]) -> Update:
    """One Update: later weights replace earlier ones, bias deltas add up."""
    merged = Update()
    for update in updates:
        merged.weights.update(update.weights)
        for position, delta in update.bias_deltas.items():
            merged.bias_deltas[position] = merged.bias_deltas.get(position, 0) + delta
    return merged


@dataclass
class NewBias:
    """A compensation for a layer without a bias of its own: an Add to insert after it."""

    output: str  # the layer's output; the Add takes the name over
    values: np.ndarray  # one per output channel, original index space
    channels: Space  # the weight's output-channel space, where pruning cuts `values`
    spatial: int  # spatial axes after the channel (Conv), 0 when channels are last
    dtype: np.dtype


def apply_update(
    model: onnx.ModelProto, consumers: Mapping[int, Consumer], update: Update
) -> list[NewBias]:
    """Write `update` into `model` (the model the consumers were found in), in place; returns
    the biases that need a new Add (see `insert_biases`)."""
    store = ConstantStore(model)
    for name, value in update.weights.items():
        current = store.get(name)
        if value.shape != current.shape:
            raise ValueError(f"update of {name} has shape {value.shape}, not {current.shape}")
        store.set(name, np.asarray(value).astype(current.dtype))
    pending = []
    for position, delta in sorted(update.bias_deltas.items()):
        consumer = consumers[position]
        node = model.graph.node[position]
        delta = np.asarray(delta, dtype=np.float64)
        if consumer.bias:
            current = store.get(consumer.bias)
            beta = float(attribute(node, "beta", 1.0)) if consumer.op_type == "Gemm" else 1.0
            new = current + (delta / beta).reshape(current.shape)
            store.set(consumer.bias, new.astype(current.dtype))
            continue
        weight = store.get(consumer.weight)
        spatial = weight.ndim - 2 if consumer.op_type == "Conv" else 0
        channels = Space(consumer.weight, consumer.out_axis)
        pending.append(NewBias(node.output[0], delta, channels, spatial, weight.dtype))
    return pending


def insert_biases(
    model: onnx.ModelProto,
    biases: list[NewBias],
    kept: Callable[[Space], np.ndarray | None] = lambda space: None,
) -> None:
    """Insert an Add after each layer of `biases`, in place; `kept(space)` gives the output
    channels that remain in `model` (None: all of them)."""
    if not biases:
        return
    store = ConstantStore(model)
    taken = {name for node in model.graph.node for name in [*node.input, *node.output]}
    taken |= {v.name for v in [*model.graph.input, *model.graph.output]}
    for bias in biases:
        position = next(i for i, n in enumerate(model.graph.node) if bias.output in n.output)
        node = model.graph.node[position]
        keep = kept(bias.channels)
        values = bias.values if keep is None else bias.values[keep]
        values = values.reshape(-1, *([1] * bias.spatial)).astype(bias.dtype)
        constant = store.add(f"{bias.output}_compensation", values)
        inner = _fresh(f"{bias.output}_uncompensated", taken)
        slot = list(node.output).index(bias.output)
        node.output[slot] = inner
        add = onnx.helper.make_node(
            "Add", [inner, constant], [bias.output], name=f"{bias.output}_compensation_add"
        )
        model.graph.node.insert(position + 1, add)


def _fresh(hint: str, taken: set[str]) -> str:
    name, n = hint, 0
    while name in taken:
        n += 1
        name = f"{hint}_{n}"
    taken.add(name)
    return name
