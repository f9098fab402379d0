"""Rewriting pass: remove whole residual sub-blocks (COMP's coarse stage).

For a residual sub-block out = h + branch(h) (see `graphprune.blocks`), removal makes the
residual bypass the branch:

    out = h

The Add becomes Identity(h) under the same output name (so every reader, graph outputs and
subgraph reads included, is untouched), then every explicit reader is pointed at h directly and
the Identity, the branch's nodes and its weights, now unread, are deleted (`remove_unused`).
Consecutive removed blocks chain: a block whose stream was a removed block's output reads that
block's stream in turn. Nodes and weights the branch shares with the rest of the model (masks,
position tables) stay.

Oracle (`zeroed_branches`): the original model with each removed branch's output multiplied by
zero computes h + 0 = h at every removed Add, so it must equal the rewritten model exactly on
onnxruntime (bit for bit with graph optimizations off; a branch that produces inf or NaN would
break this, 0 * inf = NaN).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphprune.blocks import Block, find_blocks
from graphprune.edit import remove_unused
from graphprune.errors import BadInput


def remove_blocks(
    model: onnx.ModelProto, block_ids: Iterable[str], in_place: bool = False
) -> onnx.ModelProto:
    """`model` without the sub-blocks named by `block_ids` (`Block.id`): a copy, or `model`
    itself edited with `in_place` (no second copy of the weights)."""
    chosen = _chosen(model, block_ids)
    result = model
    if not in_place:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    streams = {block.id: block.stream for block in chosen}

    def source(name: str) -> str:
        while name in streams:  # a removed block whose stream is another removed block's output
            name = streams[name]
        return name

    for node in result.graph.node:
        if node.output and node.output[0] in streams:
            bypass = helper.make_node("Identity", [source(node.output[0])], [node.output[0]])
            bypass.name = node.name
            node.CopyFrom(bypass)
        else:
            for i, name in enumerate(node.input):
                if name in streams:
                    node.input[i] = source(name)
    remove_unused(result)
    alive = {n for node in result.graph.node for n in node.output}
    stale = [v for v in result.graph.value_info if v.name not in alive]
    for value in stale:
        result.graph.value_info.remove(value)
    return result


def zeroed_branches(model: onnx.ModelProto, block_ids: Iterable[str]) -> onnx.ModelProto:
    """The oracle's reference: a copy of `model` where each chosen block's Add reads
    branch * 0 instead of the branch output."""
    chosen = {block.id: block for block in _chosen(model, block_ids)}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    nodes = []
    for original in result.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        block = chosen.get(node.output[0]) if node.output else None
        if block is not None and node.op_type == "Add":
            dtype = helper.tensor_dtype_to_np_dtype(types.get(block.branch, onnx.TensorProto.FLOAT))
            zero = f"{block.id}__zero"
            result.graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype), zero))
            zeroed = f"{block.branch}__times_zero"
            nodes.append(helper.make_node("Mul", [block.branch, zero], [zeroed], name=zeroed))
            node.input[list(node.input).index(block.branch)] = zeroed
        nodes.append(node)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result


def _chosen(model: onnx.ModelProto, block_ids: Iterable[str]) -> list[Block]:
    blocks = {block.id: block for block in find_blocks(model)}
    wanted = list(dict.fromkeys(block_ids))
    unknown = [name for name in wanted if name not in blocks]
    if unknown:
        raise BadInput(f"no residual sub-block ends in tensor '{unknown[0]}'")
    return [blocks[name] for name in wanted]
