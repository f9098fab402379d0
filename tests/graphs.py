"""Small handcrafted ONNX graphs for rule tests, and the checks every rule test runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from graphprune.passes.slice_channels import slice_channels
from onnx import TensorProto, helper, numpy_helper

from graphprune.allocate import allocate, spare_every_space
from graphprune.depgraph import DepGraph, Group
from graphprune.ops import Space
from graphprune.pipeline import analyze_model, score
from graphprune.plan import Plan
from graphprune.verify import oracle, random_inputs

RNG = np.random.default_rng(0)


def weight(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 1.5, shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=outputs[0], **attrs)


def model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple],
    outputs: list[str] | dict,
    constants: dict[str, np.ndarray],
    opset: int = 17,
    custom_domains: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """A model with float32 inputs of the given shapes. `outputs` lists names (shapes are
    inferred) or maps names to shapes (for ops onnx cannot infer)."""
    shapes = outputs if isinstance(outputs, dict) else dict.fromkeys(outputs)
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
        [numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in custom_domains)]
    made = helper.make_model(graph, opset_imports=opsets)
    made.ir_version = 8
    if custom_domains:
        return made
    made = onnx.shape_inference.infer_shapes(made)  # fills in the outputs' shapes
    del made.graph.value_info[:]
    onnx.checker.check_model(made, full_check=True)
    return made


def analyze(made: onnx.ModelProto) -> tuple[onnx.ModelProto, DepGraph]:
    """The pipeline's analysis of a copy of `made`: (prepared model, dependency graph)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(made)
    analysis = analyze_model(copy)
    return analysis.work, analysis.dep


def group_with(dep: DepGraph, tensor: str, axis: int) -> Group:
    """The group containing Space(tensor, axis)."""
    for group in dep.groups:
        if Space(tensor, axis) in group.sizes:
            return group
    raise AssertionError(f"no group holds {tensor}:{axis}")


def members(group: Group) -> set[tuple[str, int]]:
    return {(s.tensor, s.axis) for s in group.sizes}


def prune_every_group(made: onnx.ModelProto, share: float = 0.5, seed: int = 0):
    """Remove a random `share` of units from every prunable group; check the pruned model with
    onnx's full checker and the zero-then-prune oracle on CPU. Returns (pruned, dep, removals)."""
    work, dep = analyze(made)
    rng = np.random.default_rng(seed)
    removals = {}
    for group in dep.groups:
        count = int(share * group.n_units)
        if group.prunable and count:
            chosen = rng.choice(group.n_units, count, replace=False)
            removed = spare_every_space(group, chosen, rng.random(group.n_units))
            if len(removed):
                removals[group.id] = removed
    assert removals, "nothing was prunable"
    pruned = slice_channels(work, dep, removals)
    onnx.checker.check_model(pruned, full_check=True)
    checks = oracle(work, pruned, dep, removals, random_inputs(work, seed), ("cpu",))
    assert all(c.passed for c in checks), [c.line() for c in checks]
    return pruned, dep, removals


def initializer(made: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in made.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise KeyError(name)


def prune_at_ratio(made: onnx.ModelProto, ratio: float, criterion: str = "l2"):
    """What `graphprune prune --ratio` does, in memory: score every prunable group, allocate
    `ratio` of its units, replay the removals through a saved Plan's indices, slice, and check
    with the full checker and the zero-then-prune oracle. Returns (pruned, dep, removals)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(made)
    analysis = analyze_model(copy)
    dep = analysis.dep
    scores = score(analysis, criterion)
    allocated = allocate(dep.groups, scores, ratio)
    plan = Plan.from_removals(dep, allocated, analysis.fingerprint, criterion, ratio, "uniform")
    removals = plan.removals(dep)
    assert removals.keys() == allocated.keys()
    for group_id, units in removals.items():
        np.testing.assert_array_equal(units, allocated[group_id])
        group = dep.group(group_id)
        for space, labels in group.labels.items():  # every space keeps a unit
            assert not np.isin(labels, units).all(), f"{space} emptied"
    pruned = slice_channels(analysis.work, dep, removals)
    onnx.checker.check_model(pruned, full_check=True)
    inputs = random_inputs(analysis.work, 0)
    checks = oracle(analysis.work, pruned, dep, removals, inputs, ("cpu",))
    assert checks and all(c.passed for c in checks), [c.line() for c in checks]
    return pruned, dep, removals


def quantized(
    dense: onnx.ModelProto,
    folder: Path,
    static: bool = True,
    per_channel: bool = True,
    weight_type: str = "QInt8",
    quant_format: str = "QDQ",
) -> Path:
    """`dense` (one float input `x` of static shape) saved in `folder` and quantized there by
    onnxruntime.quantization: quantize_static on four random batches (activations of the
    weights' type, which onnxruntime needs for uint8 weights), or quantize_dynamic."""
    from onnxruntime import quantization

    source, target = folder / "float.onnx", folder / "quantized.onnx"
    onnx.save(dense, source)
    kind = getattr(quantization.QuantType, weight_type)
    if not static:
        quantization.quantize_dynamic(source, target, weight_type=kind)
        return target
    dims = [d.dim_value for d in dense.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(2)
    batches = iter([{"x": rng.standard_normal(dims).astype(np.float32)} for _ in range(4)])

    class Batches(quantization.CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    quantization.quantize_static(
        source,
        target,
        Batches(),
        quant_format=getattr(quantization.QuantFormat, quant_format),
        per_channel=per_channel,
        weight_type=kind,
        activation_type=kind,
    )
    return target
