"""Residual sub-blocks: find them, and measure how much each one changes the residual stream.

A residual sub-block is an Add whose inputs are the residual stream h and the output of a branch
that starts from that same stream:

    pre-LN  (LLaMA, ViT):   out = h + attn(norm(h))        out = h + mlp(norm(h))
    post-LN (BERT):         out = norm(h + attn(h))        (the Add before the norm)
    CNN residual blocks:    out = relu(h + conv(relu(conv(h))))

Found structurally: one Add input (the branch output) is computed from the other (the stream).
The branch is every node that both depends on the stream and feeds the branch output. A layer
with weights of the branch (MatMul/Gemm/Conv on a constant, or a fused attention op) must read
the stream itself or a function of the stream alone (its norm): that rules out elementwise
identities such as tanh-GELU's x + 0.044715 x^3 (no weights), and an attention mask added to the
next layer's scores (the scores depend on the mask only through whole earlier layers).
Kind: "attention" when the branch holds a Softmax or a fused attention op, else "conv" when it
holds a Conv, else "mlp".
Not found: parallel residuals (h + attn(h) + mlp(h) summed in one Add chain, GPT-J) count only
their first Add, and fused SkipLayerNormalization hides the Add.

Block importance is COMP's coarse criterion (after ShortGPT's Block Influence, Men et al. 2024):

    BI = 1 - mean over positions t of cos(h_in[t], h_out[t])

with h_in the stream and h_out the Add output, the cosine taken over the feature axis (the last
axis for attention and MLP blocks, axis 1, channels, for conv blocks), averaged over every
position of every calibration batch. A block that barely turns the stream scores near 0.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from graphprune.calibrate import exposed
from graphprune.graph import GraphIndex
from graphprune.verify import session

ATTENTION_OPS = {"Softmax", "Attention", "MultiHeadAttention", "GroupQueryAttention"}
WEIGHTED_OPS = {"MatMul", "Gemm", "Conv", "Attention"}


@dataclass(frozen=True)
class Block:
    """One residual sub-block."""

    id: str  # the residual Add's output tensor: a stable name for the block
    kind: str  # "attention" | "mlp" | "conv"
    stream: str  # the residual input h_in
    branch: str  # the branch output (the Add's other input)
    nodes: tuple[int, ...]  # positions of the branch's nodes
    parameters: int  # weights that only the branch reads (what removing it deletes)


def find_blocks(model: onnx.ModelProto) -> list[Block]:
    """Every residual sub-block of `model`, in graph order."""
    index = GraphIndex.build(model)
    constant = _constant_derived(model, index)
    blocks = []
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        if any(name in constant for name in node.input):
            continue
        for stream, branch in (node.input, reversed(node.input)):
            block = _block(model, index, constant, node, position, stream, branch)
            if block is not None:
                blocks.append(block)
                break
    return blocks


def _block(model, index, constant, add, position, stream, branch) -> Block | None:
    if not _same_shape(index, stream, add.output[0]):
        return None
    ahead = _downstream(index, stream, stop=position)
    start = index.producer.get(stream, -1)  # nothing before the stream's producer can read it
    nodes = sorted(ahead & _upstream(index, branch, floor=start))
    if not nodes:
        return None  # the branch does not start from the stream
    graph = model.graph.node
    own = _functions_of(model, stream, sorted(ahead), constant)
    entries = [
        graph[p]
        for p in nodes
        if graph[p].op_type in WEIGHTED_OPS
        and graph[p].input[0] in own
        and any(n in constant for n in graph[p].input[1:])
    ]
    if not entries:
        return None  # no layer with weights reads the stream (through a norm at most)
    ops = {graph[p].op_type for p in nodes}
    kind = "attention" if ops & ATTENTION_OPS else "conv" if "Conv" in ops else "mlp"
    return Block(add.output[0], kind, stream, branch, tuple(nodes), _own_parameters(index, nodes))


def _functions_of(
    model: onnx.ModelProto, stream: str, positions: list[int], constant: set[str]
) -> set[str]:
    """Tensors computed from `stream` and constants alone (the stream, its norm, its casts)."""
    own = {stream}
    for position in positions:  # in graph order
        node = model.graph.node[position]
        inputs = [n for n in node.input if n]
        if all(n in own or n in constant for n in inputs):
            own.update(node.output)
    return own


def _same_shape(index: GraphIndex, a: str, b: str) -> bool:
    """False only when the ranks or two static sizes differ (a broadcasting Add is no residual;
    two symbolic names may still be the same size)."""
    shape_a, shape_b = index.shapes.get(a), index.shapes.get(b)
    if shape_a is None or shape_b is None:
        return True
    if len(shape_a) != len(shape_b):
        return False
    pairs = zip(shape_a, shape_b, strict=True)
    return all(x == y for x, y in pairs if isinstance(x, int) and isinstance(y, int))


def _downstream(index: GraphIndex, tensor: str, stop: int) -> set[int]:
    """Positions of the nodes that depend on `tensor`, before position `stop`."""
    seen: set[int] = set()
    queue = deque(index.consumers.get(tensor, ()))
    while queue:
        position = queue.popleft()
        if position in seen or position >= stop:
            continue
        seen.add(position)
        for name in index.node(position).output:
            queue.extend(index.consumers.get(name, ()))
    return seen


def _upstream(index: GraphIndex, tensor: str, floor: int) -> set[int]:
    """Positions after `floor` of the nodes `tensor` is computed from (its producer included)."""
    seen: set[int] = set()
    queue = deque([tensor])
    while queue:
        position = index.producer.get(queue.popleft())
        if position is None or position <= floor or position in seen:
            continue
        seen.add(position)
        queue.extend(n for n in index.node(position).input if n)
    return seen


def _constant_derived(model: onnx.ModelProto, index: GraphIndex) -> set[str]:
    """Tensors computed from constants and tensor sizes only: weights (and transposes or casts
    of them), and the size arithmetic of Shape nodes (window partitions, reshape targets)."""
    constant = set(index.constants)
    for node in model.graph.node:  # nodes are in topological order
        inputs = [n for n in node.input if n]
        sizes = node.op_type in ("Shape", "Size")
        if sizes or (inputs and all(n in constant for n in inputs) and not _has_subgraph(node)):
            constant.update(node.output)
    return constant


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def _own_parameters(index: GraphIndex, nodes: list[int]) -> int:
    inside = set(nodes)
    total = 0
    for name in index.constants:
        readers = index.consumers.get(name, [])
        if readers and set(readers) <= inside and index.constants.is_float(name):
            total += index.constants.size(name)
    return total


def block_importance(
    model: onnx.ModelProto, blocks: list[Block], batches: Iterable[Mapping[str, np.ndarray]]
) -> np.ndarray:
    """1 - mean cos(h_in, h_out) of every block over the calibration `batches` (model feeds).
    The model gets the blocks' tensors as extra outputs for the run, and is restored after."""
    inputs = {v.name for v in model.graph.input}
    wanted = sorted({name for b in blocks for name in (b.stream, b.id)} - inputs)
    with exposed(model, wanted):
        runner = session(model)
    sums, counts = np.zeros(len(blocks)), np.zeros(len(blocks))
    for feeds in batches:
        values = dict(zip(wanted, runner.run(wanted, dict(feeds)), strict=True))
        values.update(feeds)
        for i, block in enumerate(blocks):
            axis = 1 if block.kind == "conv" else -1
            cosines = _cosines(values[block.stream], values[block.id], axis)
            sums[i] += cosines.sum()
            counts[i] += cosines.size
    return 1.0 - sums / np.maximum(counts, 1)


def least_important(
    model: onnx.ModelProto, count: int, batches: Iterable[Mapping[str, np.ndarray]]
) -> list[Block]:
    """The `count` blocks with the lowest importance, lowest first."""
    blocks = find_blocks(model)
    scores = block_importance(model, blocks, list(batches))
    return [blocks[i] for i in np.argsort(scores, kind="stable")[:count]]


def _cosines(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    dot = (a * b).sum(axis=axis)
    norms = np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 1.0)
