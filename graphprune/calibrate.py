"""Calibration: statistics of the activations that each prunable group's consumers read.

A *consumer* of a group is a linear layer (MatMul with a constant weight, Gemm, Conv with
group == 1) whose weight has a reading (`Role.IN`) slice in the group: removing a unit of the
group deletes some of that layer's input columns. Data-driven criteria (fluctuation, OBSPA,
condition number, Wanda) and compensation need, for each consumer, statistics of its input X
with the channel on the last axis (rows = every batch, token or pixel position; for Conv,
X holds the k*k patch columns of each channel, channel-major, as the weight flattens):

    count n,  mean_j,  M2_j = sum (x_j - mean_j)^2  (Welford / Chan merge over batches),
    sumsq_j = sum x_j^2,  and, when asked for, the Gram matrix G = X^T X,

all accumulated in float64 on onnxruntime, one batch at a time.

This module fixes the contract between the engine and the passes:
`CalibrationStats.consumers(group)` lists a group's consumers, `CalibrationStats.of(consumer)`
gives the `InputStats` of its input, and `column_units(consumer, group)` says which unit of the
group owns each input column (row of `Consumer.matrix`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphprune.depgraph import Group
from graphprune.ops import Space


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
    inputs: dict[str, InputStats] = field(default_factory=dict)  # keyed by Consumer.input
    samples: int = 0  # calibration samples seen (batch entries)
    source: str = ""  # "npz:<path>", "images:<dir>", "text:<path>", "data-free"

    def consumers(self, group_id: str) -> list[Consumer]:
        return self.by_group.get(group_id, [])

    def of(self, consumer: Consumer) -> InputStats:
        return self.inputs[consumer.input]


def column_units(consumer: Consumer, group: Group) -> np.ndarray:
    """Unit of `group` that owns each input column of `consumer` (each row of its matrix)."""
    per_channel = group.labels[Space(consumer.weight, consumer.in_axis)]
    return np.repeat(per_channel, consumer.kernel)
