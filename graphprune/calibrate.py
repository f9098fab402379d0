"""Calibration: statistics of the activations that each prunable group's consumers read.

A *consumer* of a group is a linear layer (MatMul with a constant 2-D weight as input 1, Gemm,
Conv with group == 1) whose weight has a reading (`Role.IN`) slice in the group: removing a unit
of the group deletes some of that layer's input columns. Data-driven criteria (fluctuation,
OBSPA, condition number, Wanda) and compensation need, for each consumer, statistics of its
input X with the channel on the last axis (rows = every batch, token or pixel position; for
Conv, X holds the k*k patch columns of each channel, channel-major, as the weight flattens,
with the layer's own pads, strides and dilations, padding zeros included):

    count n,  mean_j,  M2_j = sum (x_j - mean_j)^2  (Welford / Chan merge over batches),
    sumsq_j = sum x_j^2,  and, when asked for, the Gram matrix G = X^T X,

all accumulated in float64 on onnxruntime, one batch at a time.

This module fixes the contract between the engine and the passes:
`CalibrationStats.consumers(group)` lists a group's consumers, `CalibrationStats.of(consumer)`
gives the `InputStats` of its input, and `column_units(consumer, group)` says which unit of the
group owns each input column (row of `Consumer.matrix`).

Additions to the first version of the contract (nothing was renamed or removed):
- `Consumer.scale`: Gemm's alpha (the layer computes scale * x @ matrix + bias; 1 elsewhere).
- `Consumer.key`: where `CalibrationStats.inputs` files the consumer's statistics. It is
  `Consumer.input` except when convolutions with different geometry (kernel, pads, strides,
  dilations) read the same tensor: their patch columns differ, so each geometry gets its own
  key (`input@geometry`). Use `CalibrationStats.of(consumer)`, which knows.
- `Consumer.bias` is set only when that constant is a per-output vector read by this layer
  alone, so that compensation may add to it in place; else compensation inserts a new Add.
- `CalibrationStats` also says how it was collected: batches, passes over the data, Gram
  bytes, seconds.

Memory stays bounded: rows are processed in chunks of at most `ROW_CHUNK_BYTES` of float64,
and when the Gram matrices of all consumers together exceed `gram_budget` bytes, consumers are
split into chunks that each fit, with one pass over the data per chunk. Intermediate tensors
are exposed by adding graph outputs to the model itself for the duration of a pass (and taking
them away after): no second copy of the weights is made.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from math import prod

import numpy as np
import onnx

from graphprune.depgraph import DepGraph, Group
from graphprune.graph import GraphIndex, attribute
from graphprune.ops import Role, Space
from graphprune.progress import progress

GRAM_BUDGET = 2 * 2**30  # bytes of Gram matrices held at once (default of `calibrate`)
ROW_CHUNK_BYTES = 64 * 2**20  # float64 rows converted at once


@dataclass(frozen=True)
class Consumer:
    """A linear layer that reads a group's channels, viewed as y = x @ W2 (+ bias) where
    W2 = `matrix(weight)` has one row per input column (channel x kernel position)."""

    node: int  # position of the layer in the graph
    op_type: str  # "MatMul" | "Gemm" | "Conv"
    weight: str  # constant name
    input: str  # activation tensor the layer multiplies by the weight
    in_axis: int  # weight axis indexed by input channel
    kernel: int  # input columns per channel: k*k for Conv, 1 otherwise
    bias: str | None = None  # constant bias added by the layer itself (Gemm C, Conv B) if any
    scale: float = 1.0  # Gemm alpha: the layer computes scale * x @ W2 (+ bias)
    key: str = ""  # where CalibrationStats.inputs files this input ("" means `input`)

    def matrix(self, weight: np.ndarray) -> np.ndarray:
        """The weight as [input columns, outputs] (channel-major for Conv: c*k*k + position)."""
        if self.op_type == "Conv":
            return weight.reshape(weight.shape[0], -1).T
        return weight if self.in_axis == 0 else weight.T

    def from_matrix(self, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of `matrix`: back to the stored layout and dtype of `like`."""
        if self.op_type == "Conv":
            return matrix.T.reshape(like.shape).astype(like.dtype)
        stored = matrix if self.in_axis == 0 else matrix.T
        return np.ascontiguousarray(stored).astype(like.dtype)

    @property
    def out_axis(self) -> int:
        """Weight axis indexed by output channel."""
        return 0 if self.op_type == "Conv" else 1 - self.in_axis

    @property
    def stats_key(self) -> str:
        return self.key or self.input


@dataclass
class InputStats:
    """float64 statistics of one consumer input, one entry per input column."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    sumsq: np.ndarray
    gram: np.ndarray | None = None  # X^T X, [columns, columns]

    @property
    def var(self) -> np.ndarray:
        """Population variance of each column."""
        return self.m2 / max(self.count, 1)


@dataclass
class CalibrationStats:
    """What one calibration run collected: the consumers of every scored group and the
    statistics of each consumer's input."""

    by_group: dict[str, list[Consumer]] = field(default_factory=dict)
    inputs: dict[str, InputStats] = field(default_factory=dict)  # keyed by Consumer.stats_key
    samples: int = 0  # calibration samples seen (batch entries)
    source: str = ""  # "npz:<path>", "images:<dir>", "text:<path>", "data-free"
    batches: int = 0  # batches per pass over the data
    passes: int = 0  # passes over the data (more than one when Gram matrices were chunked)
    gram_bytes: int = 0  # bytes of every Gram matrix collected
    seconds: float = 0.0

    def consumers(self, group_id: str) -> list[Consumer]:
        return self.by_group.get(group_id, [])

    def of(self, consumer: Consumer) -> InputStats:
        return self.inputs[consumer.stats_key]

    def by_node(self) -> dict[int, Consumer]:
        """Every consumer, by its node position."""
        return {c.node: c for found in self.by_group.values() for c in found}

    def summary(self) -> dict:
        """Plain figures for reports."""
        return {
            "source": self.source,
            "samples": self.samples,
            "batches": self.batches,
            "passes": self.passes,
            "consumers": len(self.by_node()),
            "gram_bytes": self.gram_bytes,
            "seconds": round(self.seconds, 3),
        }


def losing_consumers(
    stats: CalibrationStats, group: Group, removed: np.ndarray
) -> Iterator[tuple[Consumer, np.ndarray]]:
    """Each consumer of `group` that reads a removed unit, with the input columns (rows of its
    matrix) it loses: what every compensation pass iterates over."""
    for consumer in stats.consumers(group.id):
        columns = np.flatnonzero(np.isin(column_units(consumer, group), removed))
        if len(columns):
            yield consumer, columns


def column_units(consumer: Consumer, group: Group) -> np.ndarray:
    """Unit of `group` that owns each input column of `consumer` (each row of its matrix)."""
    per_channel = group.labels[Space(consumer.weight, consumer.in_axis)]
    return np.repeat(per_channel, consumer.kernel)


def unit_column_sums(group: Group, stats: CalibrationStats, per_column) -> np.ndarray:
    """Sum `per_column(consumer, input_stats)` (one value per input column) into the unit that
    owns each column, over every consumer of `group`."""
    totals = np.zeros(group.n_units)
    for consumer in stats.consumers(group.id):
        values = per_column(consumer, stats.of(consumer))
        units = column_units(consumer, group)
        totals += np.bincount(units, weights=values, minlength=group.n_units)
    return totals


# ---------------------------------------------------------------------------------------------
# Finding consumers
# ---------------------------------------------------------------------------------------------


def find_consumers(dep: DepGraph, groups: Iterable[Group]) -> dict[str, list[Consumer]]:
    """The linear layers reading each group's channels, by group id (a group with none maps to
    an empty list)."""
    index = dep.index
    by_group: dict[str, list[Consumer]] = {}
    for group in groups:
        found = []
        for space, role in group.roles.items():
            if role != Role.IN:
                continue
            for position in index.consumers.get(space.tensor, []):
                consumer = _consumer(index, position, space)
                if consumer is not None and consumer not in found:
                    found.append(consumer)
        by_group[group.id] = sorted(found, key=lambda c: c.node)
    return _keyed(index, by_group)


def _consumer(index: GraphIndex, position: int, space: Space) -> Consumer | None:
    node = index.node(position)
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2 or node.input[1] != space.tensor:
        return None
    x = node.input[0]
    if index.is_constant(x) or not x:
        return None
    shape = index.shapes[space.tensor]
    if node.op_type == "MatMul" and len(shape) == 2 and space.axis == 0:
        return Consumer(position, "MatMul", space.tensor, x, 0, 1, _following_bias(index, node))
    if node.op_type == "Gemm":
        in_axis = 1 if attribute(node, "transB", 0) else 0
        if space.axis != in_axis:
            return None
        beta = attribute(node, "beta", 1.0)
        outputs = shape[1 - in_axis]
        bias = _own_vector(index, node, 2, outputs, position) if beta else None
        alpha = float(attribute(node, "alpha", 1.0))
        return Consumer(position, "Gemm", space.tensor, x, in_axis, 1, bias, alpha)
    if node.op_type == "Conv" and attribute(node, "group", 1) == 1 and space.axis == 1:
        bias = _own_vector(index, node, 2, shape[0], position)
        return Consumer(position, "Conv", space.tensor, x, 1, int(prod(shape[2:])), bias)
    return None


def _own_vector(
    index: GraphIndex, node: onnx.NodeProto, input_index: int, size: int, position: int
) -> str | None:
    """The constant at `input_index` if it holds one value per output and only `node` reads
    it (so that it may be edited in place)."""
    name = node.input[input_index] if len(node.input) > input_index else ""
    if not name or not index.is_constant(name):
        return None
    shape = index.constants.shape(name)
    # one value per output, along the last axis ([N] or [1, ..., N]; [N, 1] would broadcast
    # along another axis)
    if prod(shape) != size or shape[-1:] != (size,):
        return None
    return name if index.consumers.get(name, []) == [position] else None


def _following_bias(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """The constant of an Add that alone reads the MatMul's output and adds a vector along the
    last axis (a Linear layer's bias as exporters emit it)."""
    output = node.output[0]
    readers = index.consumers.get(output, [])
    if len(readers) != 1 or output in index.graph_outputs:
        return None
    add = index.node(readers[0])
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    others = [i for i, name in enumerate(add.input) if name != output]
    if len(others) != 1:
        return None
    outputs = index.constants.shape(node.input[1])[1]
    return _own_vector(index, add, others[0], outputs, readers[0])


def _keyed(index: GraphIndex, by_group: dict[str, list[Consumer]]) -> dict[str, list[Consumer]]:
    """Give convolutions that read a shared tensor with different geometry their own keys."""
    views: dict[str, set[str]] = {}
    for consumer in itertools.chain.from_iterable(by_group.values()):
        views.setdefault(consumer.input, set()).add(_view(index, consumer))
    return {
        group_id: [
            replace(c, key=f"{c.input}@{_view(index, c)}") if len(views[c.input]) > 1 else c
            for c in found
        ]
        for group_id, found in by_group.items()
    }


def _view(index: GraphIndex, consumer: Consumer) -> str:
    """How a consumer turns its input into columns."""
    node = index.node(consumer.node)
    if consumer.op_type == "Gemm":
        return f"gemm transA={attribute(node, 'transA', 0)}"
    if consumer.op_type == "MatMul":
        return "matmul"
    geometry = _conv_geometry(node, index.constants.shape(consumer.weight))
    return "conv " + " ".join(f"{k}={v}" for k, v in geometry.items())


# ---------------------------------------------------------------------------------------------
# Columns: a consumer's input with the channel (and kernel position) last
# ---------------------------------------------------------------------------------------------


def _conv_geometry(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> dict:
    spatial = len(weight_shape) - 2
    return {
        "kernel": tuple(weight_shape[2:]),
        "strides": tuple(attribute(node, "strides", [1] * spatial)),
        "dilations": tuple(attribute(node, "dilations", [1] * spatial)),
        "pads": tuple(attribute(node, "pads", [0] * 2 * spatial)),
        "auto_pad": _text(attribute(node, "auto_pad", "NOTSET")),
    }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conv_columns(x: np.ndarray, geometry: Mapping) -> np.ndarray:
    """im2col: [N, C, *spatial] -> [N * output positions, C * prod(kernel)], column c*K + p
    where p runs over kernel offsets in row-major order (as Conv's weight flattens)."""
    windows = list(_conv_windows(x, geometry))
    n, c = x.shape[:2]
    outs = windows[0].shape[2:]
    columns = np.empty((n, *outs, c, len(windows)), dtype=x.dtype)
    for k, window in enumerate(windows):
        columns[..., k] = np.moveaxis(window, 1, -1)
    return columns.reshape(-1, c * len(windows))


def conv_sums(x: np.ndarray, geometry: Mapping) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, sum, sum of squares) of each im2col column of `x`, in float64, without building
    the columns: one strided window of the padded input per kernel offset."""
    totals, squares = [], []
    rows = 0
    for window in _conv_windows(x, geometry):
        axes = (0, *range(2, window.ndim))
        totals.append(window.sum(axis=axes, dtype=np.float64))
        letters = "nc" + "defghijk"[: window.ndim - 2]
        squares.append(np.einsum(f"{letters},{letters}->c", window, window, dtype=np.float64))
        rows = window.size // window.shape[1]
    # [K, C] -> column c*K + k
    return rows, np.stack(totals, axis=1).ravel(), np.stack(squares, axis=1).ravel()


def _conv_windows(x: np.ndarray, geometry: Mapping) -> Iterator[np.ndarray]:
    """For each kernel offset (row-major), the strided view [N, C, *outputs] of the padded
    input that this offset multiplies."""
    kernel, strides, dilations = geometry["kernel"], geometry["strides"], geometry["dilations"]
    spatial = x.shape[2:]
    begins, ends = _conv_pads(spatial, geometry)
    padded = np.pad(x, [(0, 0), (0, 0), *zip(begins, ends, strict=True)])
    outs = [
        (size + b + e - (k - 1) * d - 1) // s + 1
        for size, b, e, k, d, s in zip(
            spatial, begins, ends, kernel, dilations, strides, strict=True
        )
    ]
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offset, dilations, outs, strides, strict=True)
        )
        yield padded[(slice(None), slice(None), *window)]


def _conv_pads(spatial, geometry) -> tuple[list[int], list[int]]:
    auto_pad = geometry["auto_pad"]
    n = len(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, d, s in zip(
            spatial, geometry["kernel"], geometry["dilations"], geometry["strides"], strict=True
        ):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    pads = list(geometry["pads"])
    return pads[:n], pads[n:]


def _accumulate(
    index: GraphIndex, consumer: Consumer, x: np.ndarray, accumulator: Accumulator
) -> None:
    """Add the consumer's input `x` (one batch) to its statistics. Without a Gram matrix only
    float64 sums are needed, taken straight from the float32 activation; with one, float64 rows
    are built in chunks of at most ROW_CHUNK_BYTES."""
    node = index.node(consumer.node)
    if consumer.op_type == "Conv":
        geometry = _conv_geometry(node, index.constants.shape(consumer.weight))
        if accumulator.gram is None:
            accumulator.add_sums(*conv_sums(x, geometry))
            return
        samples = (conv_columns(x[i : i + 1], geometry) for i in range(x.shape[0]))
    elif consumer.op_type == "Gemm" and attribute(node, "transA", 0):
        samples = iter([x.T])
    else:
        samples = iter([x.reshape(-1, x.shape[-1])])
    for rows in samples:
        if accumulator.gram is None:
            accumulator.add(rows)
            continue
        step = max(1, ROW_CHUNK_BYTES // (8 * max(rows.shape[1], 1)))
        for start in range(0, rows.shape[0], step):
            accumulator.add(rows[start : start + step].astype(np.float64))


# ---------------------------------------------------------------------------------------------
# Accumulating
# ---------------------------------------------------------------------------------------------


class Accumulator:
    """Running float64 statistics of row chunks: Chan et al.'s parallel merge of (n, mean, M2)
    over chunks, sum of squares and X^T X as plain sums.

    Within a chunk, M2 = sum x^2 - (sum x)^2 / n from float64 sums of the (float32) values:
    no float64 copy of the chunk is needed for it; the cancellation costs about
    eps64 * mean^2 / var of relative precision (1e-12 at |mean| = 100 std).
    """

    def __init__(self, columns: int, gram: bool):
        self.count = 0
        self.mean = np.zeros(columns)
        self.m2 = np.zeros(columns)
        self.sumsq = np.zeros(columns)
        self.gram = np.zeros((columns, columns)) if gram else None

    def add(self, rows: np.ndarray) -> None:
        """Rows [n, columns] of any float dtype (float64 when a Gram matrix is collected)."""
        if rows.shape[0] == 0:
            return
        total = rows.sum(axis=0, dtype=np.float64)
        squares = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        self.add_sums(rows.shape[0], total, squares)
        if self.gram is not None:
            self.gram += rows.T @ rows

    def add_sums(self, n_b: int, total: np.ndarray, squares: np.ndarray) -> None:
        """A chunk given by its row count, column sums and column sums of squares."""
        if n_b == 0:
            return
        mean_b = total / n_b
        m2_b = np.maximum(squares - total * mean_b, 0.0)
        count = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / count)
        self.m2 += m2_b + delta * delta * (self.count * n_b / count)
        self.count = count
        self.sumsq += squares

    def result(self) -> InputStats:
        return InputStats(self.count, self.mean, self.m2, self.sumsq, self.gram)


def calibrate(
    model: onnx.ModelProto,
    dep: DepGraph,
    groups: Iterable[Group],
    batches,
    gram: bool = False,
    gram_budget: int = GRAM_BUDGET,
    threads: int = 0,
) -> CalibrationStats:
    """Statistics of every consumer input of `groups` over `batches` (a re-iterable of feed
    dicts with `len`, e.g. `graphprune.data.Batches`; its `source` names it). `model` is the
    model `dep` was built from; it gets extra graph outputs while a pass runs and is restored
    after."""
    from graphprune.verify import session

    start = time.perf_counter()
    by_group = find_consumers(dep, groups)
    views = {c.stats_key: c for found in by_group.values() for c in found}
    index = dep.index
    columns = {key: _column_count(index, c) for key, c in views.items()}
    chunks = _chunks(columns, gram, gram_budget)
    accumulators = {key: Accumulator(columns[key], gram) for key in views}
    samples = 0
    for number, chunk in enumerate(chunks):
        # a consumer may read a graph input directly: that one comes from the feeds
        names = sorted({views[key].input for key in chunk} - index.graph_inputs)
        with exposed(model, names):
            sess = session(model, threads=threads)
        label = "calibrating" + (f" ({number + 1}/{len(chunks)})" if len(chunks) > 1 else "")
        for feeds in progress(batches, label, total=len(batches)):
            outputs = sess.run(names, dict(feeds)) if names else []
            values = dict(feeds) | dict(zip(names, outputs, strict=True))
            if number == 0:
                samples += _batch_size(feeds)
            for key in chunk:
                consumer = views[key]
                _accumulate(index, consumer, values[consumer.input], accumulators[key])
        del sess
    return CalibrationStats(
        by_group=by_group,
        inputs={key: acc.result() for key, acc in accumulators.items()},
        samples=samples,
        source=getattr(batches, "source", ""),
        batches=len(batches),
        passes=len(chunks),
        gram_bytes=sum(8 * n * n for n in columns.values()) if gram else 0,
        seconds=time.perf_counter() - start,
    )


def _column_count(index: GraphIndex, consumer: Consumer) -> int:
    return index.constants.shape(consumer.weight)[consumer.in_axis] * consumer.kernel


def _chunks(columns: Mapping[str, int], gram: bool, budget: int) -> list[list[str]]:
    """Consumer keys in chunks whose Gram matrices fit `budget` bytes together (one chunk
    without Gram matrices; a consumer larger than the budget alone gets a chunk of its own)."""
    keys = sorted(columns)
    if not gram:
        return [keys] if keys else []
    chunks: list[list[str]] = []
    used = budget + 1
    for key in keys:
        size = 8 * columns[key] ** 2
        if used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(key)
        used += size
    return chunks


def _batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


@contextlib.contextmanager
def exposed(model: onnx.ModelProto, names: list[str]):
    """`model` with `names` as extra graph outputs, and without inferred value_info (sizes
    inferred at one input shape would be wrong at other shapes); restored after."""
    graph = model.graph
    declared = len(graph.output)
    saved = onnx.GraphProto()
    saved.value_info.extend(graph.value_info)
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    present = {o.name for o in graph.output}
    for name in names:
        if name not in present:
            elem = types.get(name, onnx.TensorProto.FLOAT)
            graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    del graph.value_info[:]
    try:
        yield model
    finally:
        del graph.output[declared:]
        graph.value_info.extend(saved.value_info)
